"""Dashboard logins: a signed session cookie that names who logged in, never their key.

The cookie holds ``{"sub": "master" | key id, "fp": the key hash's first 16 hex digits,
"sid": a random session id, "csrf": a random token, "exp": unix time}``, signed with
HMAC-SHA256 under a secret derived from the master key. So every worker and replica that
shares the master key accepts it, changing the master key ends every session, and a virtual
key's session ends when the key is revoked, expires, loses its admin flag or is rotated (its
hash changes). A session is also open only while ``Sessions`` says so: logging out ends it on
the server, so a copy of the cookie stops working too. It is ``HttpOnly`` (no script reads
it), ``SameSite=Strict`` (no other site's page sends it) and limited to ``/ui``; each form
also carries the session's CSRF token.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from gateway.keys import SessionStore

COOKIE = "gw_ui_session"
PATH = "/ui"


@dataclass(frozen=True, slots=True)
class Session:
    """Who is logged in to the dashboard, and the token their forms must carry."""

    subject: str  # "master" or a virtual key's id
    fingerprint: str  # the key hash's first 16 hex digits ("" for the master key)
    csrf: str
    expires: int
    sid: str  # the session's id, which logging out ends

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
            subject,
            fingerprint,
            secrets.token_urlsafe(24),
            int(time.time()) + self.lifetime,
            secrets.token_urlsafe(24),
        )
        payload = _b64(
            orjson.dumps(
                {
                    "sub": subject,
                    "fp": fingerprint,
                    "sid": session.sid,
                    "csrf": session.csrf,
                    "exp": session.expires,
                }
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
            session = Session(str(sub), str(fp), str(csrf), int(exp), str(data["sid"]))
        except (ValueError, KeyError, TypeError):
            return None
        return session if session.expires > time.time() else None

    def _sign(self, payload: str) -> str:
        return _b64(hmac.new(self._secret, payload.encode(), hashlib.sha256).digest())


def csrf_ok(session: Session, sent: str | None) -> bool:
    return bool(sent) and hmac.compare_digest(session.csrf.encode(), (sent or "").encode())


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


class Sessions:
    """Which sessions are open: in the database when there is one (every worker and replica
    agrees), else in this process (sessions ended here, until they expire)."""

    def __init__(self, store: SessionStore | None) -> None:
        self.store = store
        self._ended: dict[str, float] = {}  # without a store: session id -> its expiry

    async def opened(self, session: Session) -> None:
        if self.store is not None:
            await self.store.open(session.sid, session.subject, _utc(session.expires))

    async def is_open(self, session: Session) -> bool:
        if self.store is not None:
            return await self.store.is_open(session.sid)
        return session.sid not in self._ended

    async def end(self, session: Session) -> None:
        if self.store is not None:
            await self.store.end(session.sid)
            return
        now = time.time()
        self._ended = {sid: exp for sid, exp in self._ended.items() if exp > now}
        self._ended[session.sid] = session.expires


def _utc(unix: int) -> datetime:
    return datetime.fromtimestamp(unix, UTC)


@dataclass(slots=True)
class LoginThrottle:
    """Refuses logins after ``limit`` failures within ``window`` seconds from one client
    address, or with one key prefix (the first 12 characters tried, what listings show), so
    the login form cannot be used to guess a weak master key quickly. The address is the
    client's as far as trusted proxies tell (``server.trusted_proxies``), so admins behind one
    load balancer are counted apart and a forged ``X-Forwarded-For`` changes nothing. Per
    process."""

    limit: int = 10
    window: float = 60.0
    _failures: dict[str, deque[float]] = field(default_factory=dict)

    def blocked_for(self, address: str, key: str = "") -> float:
        """Seconds until a login from ``address`` with ``key`` may be tried (0: now)."""
        return max(self._blocked(name) for name in self._names(address, key))

    def failed(self, address: str, key: str = "") -> None:
        if len(self._failures) > 10_000:  # bounded: forget everyone rather than grow
            self._failures.clear()
        for name in self._names(address, key):
            self._recent(name).append(time.monotonic())

    @staticmethod
    def _names(address: str, key: str) -> list[str]:
        return [f"address:{address}", *([f"key:{key[:12]}"] if key else [])]

    def _blocked(self, name: str) -> float:
        failures = self._recent(name)
        if len(failures) < self.limit:
            return 0.0
        return max(0.0, failures[0] + self.window - time.monotonic())

    def _recent(self, name: str) -> deque[float]:
        failures = self._failures.setdefault(name, deque())
        while failures and failures[0] < time.monotonic() - self.window:
            failures.popleft()
        return failures
