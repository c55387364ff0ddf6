"""Every failure the gateway can answer with, and its OpenAI-style JSON body.

Callers (the OpenAI SDK above all) read ``{"error": {"message", "type", "param", "code"}}``
and the HTTP status; those two things are the contract, so each error class fixes both.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


# Secrets this process knows (``register_secrets``: the keys in every config it loaded), and
# the shapes of credentials it does not know: neither ever appears in an error's text, since
# upstreams have been seen quoting a request's Authorization header back in their errors.
_secrets: set[str] = set()
_known: re.Pattern[str] | None = None
_CREDENTIAL = re.compile(
    r"(?i)\b(?:bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}"  # an Authorization header's value
    r"|\bsk-[A-Za-z0-9_-]{12,}"  # OpenAI-style and the gateway's own keys
)
REDACTED = "[redacted]"
MIN_SECRET_LENGTH = 6  # shorter values would blank out ordinary words


def register_secrets(values: Iterable[str]) -> None:
    """Add ``values`` to the secrets no error message may contain (never removed: a reload
    does not make an old key safe to show)."""
    global _known
    new = {v for v in values if len(v) >= MIN_SECRET_LENGTH} - _secrets
    if not new:
        return
    _secrets.update(new)
    ordered = sorted(_secrets, key=len, reverse=True)  # the longest match first
    _known = re.compile("|".join(re.escape(v) for v in ordered))


def redact(text: str) -> str:
    """``text`` with every registered secret and every credential-shaped token replaced."""
    if _known is not None:
        text = _known.sub(REDACTED, text)
    return _CREDENTIAL.sub(REDACTED, text)


class GatewayError(Exception):
    """Base of all errors the gateway turns into an answer. Its message and ``param`` are
    redacted (``redact``) as it is made: much of their text comes from upstream answers."""

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
        message = redact(message)
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        if type is not None:
            self.type = type
        if code is not None:
            self.code = code
        self.param = param if param is None else redact(param)
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


class StaleConnectionError(UpstreamConnectionError):
    """A pooled keep-alive connection broke as it was reused, before any answer: the
    upstream had most likely closed it while idle, so the request is sent once more at once."""

    code = "stale_connection"


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


class InternalError(GatewayError):
    """A fault of the gateway's own (500): logged with its traceback, answered with the
    request id so the log entry can be found."""

    code = "internal_error"

    def __init__(self, request_id: str | None = None, where: str = "") -> None:
        ref = f" (request id {request_id})" if request_id else ""
        super().__init__(
            f"the gateway hit an internal error{where}{ref}; it has been logged — retry, and "
            "report it with the request id if it persists"
        )
        self.request_id = request_id


class ShuttingDownError(GatewayError):
    """The gateway stopped before it could answer (503): the request may be sent again, to
    another replica or once this one is back."""

    status = 503
    type = "api_error"
    code = "shutting_down"

    def __init__(self, message: str | None = None, **kwargs: Any) -> None:
        headers = {"retry-after": "1", **(kwargs.pop("headers", None) or {})}
        super().__init__(
            message or "the gateway shut down before the answer was ready; send the request again",
            headers=headers,
            **kwargs,
        )


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


def check_json_depth(data: object, limit: int, what: str = "request body") -> None:
    """The 400 for JSON nested deeper than ``limit`` (objects and arrays; the outermost is 1):
    such a body could be decoded but not sent on (orjson writes at most 254 levels) nor
    stored, so it is refused before anything else sees it."""
    level: list[dict[Any, Any] | list[Any]] = [data] if isinstance(data, dict | list) else []
    depth = 0
    while level:
        depth += 1
        if depth > limit:
            raise InvalidRequestError(
                f"{what} is nested more than {limit} levels deep (objects and arrays); "
                "send a flatter structure",
                code="nesting_too_deep",
            )
        inner: list[dict[Any, Any] | list[Any]] = []
        for value in level:
            children = value.values() if isinstance(value, dict) else value
            inner += [c for c in children if isinstance(c, dict | list)]
        level = inner
