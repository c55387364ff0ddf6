"""Dashboard logins: a signed session cookie that names who logged in, never their key.

The cookie holds ``{"sub": "master" | key id, "fp": the key hash's first 16 hex digits,
"csrf": a random token, "exp": unix time}``, signed with HMAC-SHA256 under a secret derived
from the master key. So every worker and replica that shares the master key accepts it,
changing the master key ends every session, and a virtual key's session ends when the key is
revoked, expires, loses its admin flag or is rotated (its hash changes). It is ``HttpOnly``
(no script reads it), ``SameSite=Strict`` (no other site's page sends it) and limited to
``/ui``; each form also carries the session's CSRF token.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import orjson

COOKIE = "gw_ui_session"
PATH = "/ui"


@dataclass(frozen=True, slots=True)
class Session:
    """Who is logged in to the dashboard, and the token their forms must carry."""

    subject: str  # "master" or a virtual key's id
    fingerprint: str  # the key hash's first 16 hex digits ("" for the master key)
    csrf: str
    expires: int

    @property
    def is_master(self) -> bool:
        return self.subject == "master"


class SessionSigner:
    """Issues and checks session cookies with a secret derived from the master key."""

    def __init__(self, master_key: str, lifetime_seconds: float) -> None:
        self._secret = hmac.new(
            master_key.encode(), b"llm-gateway dashboard session v1", hashlib.sha256
        ).digest()
        self.lifetime = int(lifetime_seconds)

    def issue(self, subject: str, fingerprint: str = "") -> tuple[Session, str]:
        """A new session and its cookie value."""
        session = Session(
            subject, fingerprint, secrets.token_urlsafe(24), int(time.time()) + self.lifetime
        )
        payload = _b64(
            orjson.dumps(
                {"sub": subject, "fp": fingerprint, "csrf": session.csrf, "exp": session.expires}
            )
        )
        return session, f"{payload}.{self._sign(payload)}"

    def load(self, cookie: str | None) -> Session | None:
        """The session a cookie carries, or None if it is missing, forged or expired."""
        if not cookie or cookie.count(".") != 1:
            return None
        payload, signature = cookie.split(".")
        if not hmac.compare_digest(signature, self._sign(payload)):
            return None
        try:
            data: Any = orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
            sub, fp, csrf, exp = data["sub"], data["fp"], data["csrf"], data["exp"]
            session = Session(str(sub), str(fp), str(csrf), int(exp))
        except (ValueError, KeyError, TypeError):
            return None
        return session if session.expires > time.time() else None

    def _sign(self, payload: str) -> str:
        return _b64(hmac.new(self._secret, payload.encode(), hashlib.sha256).digest())


def csrf_ok(session: Session, sent: str | None) -> bool:
    return bool(sent) and hmac.compare_digest(session.csrf.encode(), (sent or "").encode())


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@dataclass(slots=True)
class LoginThrottle:
    """Refuses logins from an address after ``limit`` failures within ``window`` seconds, so
    the login form cannot be used to guess a weak master key quickly. Per process."""

    limit: int = 10
    window: float = 60.0
    _failures: dict[str, deque[float]] = field(default_factory=dict)

    def blocked_for(self, address: str) -> float:
        """Seconds until ``address`` may try again (0: now)."""
        failures = self._recent(address)
        if len(failures) < self.limit:
            return 0.0
        return max(0.0, failures[0] + self.window - time.monotonic())

    def failed(self, address: str) -> None:
        if len(self._failures) > 10_000:  # bounded: forget everyone rather than grow
            self._failures.clear()
        self._recent(address).append(time.monotonic())

    def _recent(self, address: str) -> deque[float]:
        failures = self._failures.setdefault(address, deque())
        while failures and failures[0] < time.monotonic() - self.window:
            failures.popleft()
        return failures
