"""Every failure the gateway can answer with, and its OpenAI-style JSON body.

Callers (the OpenAI SDK above all) read ``{"error": {"message", "type", "param", "code"}}``
and the HTTP status; those two things are the contract, so each error class fixes both.
"""

from __future__ import annotations

import time
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


class GatewayError(Exception):
    """Base of all errors the gateway turns into an answer."""

    status: int = 500
    type: str = "api_error"
    code: str | None = None
    # The gateway's x-request-id of the failed call, where it is known (set by gateway.client).
    request_id: str | None = None

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        type: str | None = None,
        code: str | None = None,
        param: str | None = None,
        provider: str | None = None,
        deployment: str | None = None,
        headers: dict[str, str] | None = None,
        retryable: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        if type is not None:
            self.type = type
        if code is not None:
            self.code = code
        self.param = param
        self.provider = provider
        self.deployment = deployment
        self.headers: dict[str, str] = headers or {}
        self._retryable = retryable

    @property
    def retryable(self) -> bool:
        """Whether another attempt (same or other deployment) may succeed."""
        if self._retryable is not None:
            return self._retryable
        return self.status in (408, 409, 429) or self.status >= 500

    @property
    def failover(self) -> bool:
        """Whether *another* deployment may succeed where this one failed: transient errors,
        and upstream answers that are about the deployment (its key, its model name, its
        account's quota) rather than about the request."""
        return (
            self.retryable
            or (self.provider is not None and self.status in (401, 403, 404))
            or self.code == "insufficient_quota"
        )

    def attribute(self, provider: str, deployment: str) -> GatewayError:
        """Record which provider/deployment failed, and say so in the message."""
        self.provider = self.provider or provider
        self.deployment = self.deployment or deployment
        if f"'{provider}'" not in self.message:
            self.message = f"provider '{provider}' (deployment '{deployment}'): {self.message}"
        return self

    def to_body(self) -> dict[str, Any]:
        """The OpenAI-style error body."""
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"{type(self).__name__}(status={self.status}, code={self.code!r}, {self.message!r})"


class InvalidRequestError(GatewayError):
    """The request is malformed or violates the schema (400)."""

    status = 400
    type = "invalid_request_error"


class AuthenticationError(GatewayError):
    """Missing, wrong, revoked or expired key (401)."""

    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class PermissionDeniedError(GatewayError):
    """The key may not use what it asked for (403)."""

    status = 403
    type = "permission_error"


class NotFoundError(GatewayError):
    """Unknown model or route (404)."""

    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


class PayloadTooLargeError(GatewayError):
    """Request body over the configured limit (413)."""

    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class RateLimitError(GatewayError):
    """Too many requests, from the gateway's limits or from upstream (429)."""

    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class ContentFilterError(GatewayError):
    """The provider refused the prompt or the answer on content grounds (400)."""

    status = 400
    type = "invalid_request_error"
    code = "content_filter"

    def __init__(self, message: str, **kwargs: Any) -> None:
        kwargs.setdefault("retryable", False)
        super().__init__(message, **kwargs)


class ContextLengthExceededError(GatewayError):
    """The prompt does not fit the model's context window (400)."""

    status = 400
    type = "invalid_request_error"
    code = "context_length_exceeded"

    def __init__(self, message: str, **kwargs: Any) -> None:
        kwargs.setdefault("retryable", False)
        super().__init__(message, **kwargs)


class BudgetExceededError(GatewayError):
    """The key's or team's budget cannot cover this request (429, never retried)."""

    status = 429
    type = "insufficient_quota"
    code = "budget_exceeded"

    def __init__(self, message: str, **kwargs: Any) -> None:
        headers = dict(kwargs.pop("headers", None) or {})
        headers["x-should-retry"] = "false"
        kwargs["retryable"] = False
        super().__init__(message, headers=headers, **kwargs)


class RequestTimeoutError(GatewayError):
    """The request's whole time (``routing.timeouts.total`` or its own) ran out (504)."""

    status = 504
    type = "timeout_error"
    code = "request_timeout"

    def __init__(self, message: str, **kwargs: Any) -> None:
        kwargs.setdefault("retryable", False)
        super().__init__(message, **kwargs)


class UpstreamError(GatewayError):
    """The provider answered with an error; status class is the provider's."""

    type = "upstream_error"


class UpstreamTimeoutError(GatewayError):
    """The provider did not answer in time (504)."""

    status = 504
    type = "timeout_error"
    code = "upstream_timeout"


class UpstreamConnectionError(GatewayError):
    """The provider could not be reached (502)."""

    status = 502
    type = "upstream_error"
    code = "upstream_unreachable"


class StreamInterruptedError(GatewayError):
    """The upstream stream broke after the answer had started (502)."""

    status = 502
    type = "upstream_error"
    code = "stream_interrupted"


class ClientDisconnectedError(GatewayError):
    """The caller went away mid-answer (recorded as nginx's 499; never sent to anyone)."""

    status = 499
    type = "client_closed_request"
    code = "client_disconnected"


class DependencyUnavailableError(GatewayError):
    """A service the gateway needs for the call — the key database, the Redis that counts
    limits — cannot be reached (503, with Retry-After). The message names the service."""

    status = 503
    type = "service_unavailable"
    code = "dependency_unavailable"

    def __init__(self, message: str, *, retry_after: int = 1, **kwargs: Any) -> None:
        headers = dict(kwargs.pop("headers", None) or {})
        headers.setdefault("retry-after", str(retry_after))
        super().__init__(message, headers=headers, **kwargs)


class MalformedEventError(Exception):
    """One stream event could not be decoded; the stream guard skips and counts it."""


class ConfigError(Exception):
    """The configuration is invalid; the message lists each problem with its key path."""


def retry_after_seconds(error: GatewayError) -> float | None:
    """The wait an answer asked for: retry-after-ms, x-ms-retry-after-ms or Retry-After
    (seconds or an HTTP date), in seconds; None when it asked for nothing usable."""
    headers = error.headers
    for name in ("retry-after-ms", "x-ms-retry-after-ms"):
        value = headers.get(name)
        if value is not None:
            try:
                return max(0.0, float(value) / 1000.0)
            except ValueError:
                pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def validation_message(exc: ValidationError, what: str = "request body") -> tuple[str, str | None]:
    """A message naming each invalid field (the first five), and the first field as ``param``."""
    parts = []
    first: str | None = None
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err["loc"])
        first = first or loc
        parts.append(f"'{loc}': {err['msg'].lower()}" if loc else err["msg"])
    return f"invalid {what}: " + "; ".join(parts), first


def validated(model: type[M], data: object, what: str = "request body") -> M:
    """``data`` checked against ``model``, or the 400 naming each invalid field (and the
    first as ``param``): one answer for every body, form and argument set the gateway checks."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        message, param = validation_message(exc, what)
        raise InvalidRequestError(message, param=param) from exc
