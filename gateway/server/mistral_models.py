"""``GET /v1/models`` in Mistral's shape, for Mistral's SDKs.

Mistral's SDKs read the model list as model cards (``BaseModelCard`` in Mistral's OpenAPI
spec): each must say its ``type`` and ``capabilities``, which OpenAI's list has not, so
``mistralai``'s ``models.list()`` could not read it. Clients are told apart by their User-Agent,
as on Mistral's other routes (gateway/server/native.py); every other client keeps OpenAI's
shape on the same paths.
"""

from __future__ import annotations

import orjson
from starlette.requests import Request
from starlette.responses import Response

from gateway.engine import Engine
from gateway.errors import GatewayError, NotFoundError
from gateway.server.asgi import GatewayApp
from gateway.server.http import JSON_TYPE, Gatekeeper, error_response, new_call
from gateway.server.native import MISTRAL_CLIENTS, ClientRoute
from gateway.wire import JSON
from providers.base import Deployment

DEFAULT_CONTEXT = 32768  # BaseModelCard's max_context_length when nothing says more


def add_mistral_model_routes(app: GatewayApp, engine: Engine, gate: Gatekeeper) -> None:
    """Answer Mistral's SDKs on ``/v1/models`` and ``/v1/models/{id}`` with model cards."""
    cards = MistralModels(engine, gate)
    app.router.routes[0:0] = [
        ClientRoute(path, endpoint, agents=MISTRAL_CLIENTS, methods=("GET",))
        for prefix in ("/v1", "")
        for path, endpoint in (
            (f"{prefix}/models", cards.list),
            (f"{prefix}/models/{{model_id:path}}", cards.retrieve),
        )
    ]


class MistralModels:
    """The gateway's public models as Mistral model cards."""

    def __init__(self, engine: Engine, gate: Gatekeeper) -> None:
        self.engine = engine
        self.gate = gate

    async def list(self, request: Request) -> Response:
        call = new_call(request)
        try:
            await self.gate.authenticate(request)
        except GatewayError as exc:
            return error_response(exc, call.headers())
        cards = [self.card(model) for model in self.engine.router.models()]
        return self._json({"object": "list", "data": cards}, call.request_id)

    async def retrieve(self, request: Request) -> Response:
        model = request.path_params["model_id"]
        call = new_call(request)
        try:
            await self.gate.authenticate(request)
            if model not in self.engine.router.deployments:
                raise NotFoundError(
                    f"model '{model}' is not served by this gateway; available models: "
                    f"{', '.join(self.engine.router.models())}",
                    param="model",
                )
        except GatewayError as exc:
            return error_response(exc, call.headers())
        return self._json(self.card(model), call.request_id)

    def card(self, model: str) -> JSON:
        """``model`` as a BaseModelCard: what its deployments can do, together."""
        deployments = self.engine.router.deployments[model]
        generating = [d for d in deployments if not self._embeds_only(d)]
        return {
            "id": model,
            "object": "model",
            "created": 0,
            "owned_by": "llm-gateway",
            "capabilities": {
                "completion_chat": any(not d.lacks(frozenset({"chat"})) for d in generating),
                "function_calling": any(not d.lacks(frozenset({"tools"})) for d in generating),
                "completion_fim": any("fim" in d.completion_modes() for d in generating),
                "fine_tuning": False,
                "vision": False,
                "classification": False,
            },
            "name": model,
            "description": None,
            "max_context_length": self.engine.router.context_window(model) or DEFAULT_CONTEXT,
            "aliases": [],
            "deprecation": None,
            "default_model_temperature": None,
            "type": "base",
        }

    def _embeds_only(self, deployment: Deployment) -> bool:
        """Whether the price catalog knows the deployment's model as an embedding model."""
        price = self.engine.accountant.price(deployment)
        return price is not None and price.embedding is not None

    @staticmethod
    def _json(body: JSON, request_id: str) -> Response:
        return Response(
            orjson.dumps(body), media_type=JSON_TYPE, headers={"x-request-id": request_id}
        )
