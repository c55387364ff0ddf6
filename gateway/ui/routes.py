"""The dashboard's routes under ``/ui``: log in with the master key or an admin key, then
spend, traffic, deployments, and keys and teams.

Pages are rendered on the server (Jinja2); htmx swaps them in place and Chart.js draws the
charts from JSON the page carries, both served from ``/ui/static`` (nothing from elsewhere).
Every page has the same numbers as tables, so it reads without JavaScript. Changes go
through ``KeyAdmin``, the admin API's own operations.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import jinja2
from fastapi import FastAPI, Request
from pydantic import BaseModel
from sqlalchemy.exc import IntegrityError
from starlette.datastructures import FormData
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.staticfiles import StaticFiles

from gateway.engine import Engine
from gateway.errors import (
    AuthenticationError,
    GatewayError,
    NotFoundError,
    PayloadTooLargeError,
    validated,
)
from gateway.keys import (
    KeyAdmin,
    KeyChange,
    KeySpec,
    KeyStore,
    SessionStore,
    TeamChange,
    TeamSpec,
    VirtualKey,
    hash_key,
    key_store_disabled,
)
from gateway.keys.names import group_names
from gateway.keys.store import store_errors
from gateway.ledger.reports import CSV_TYPE, report_csv
from gateway.ledger.writer import describe
from gateway.ui import views
from gateway.ui.audit import (
    actor_subject,
    audit_page_data,
    form_fields,
    record_ui_act,
    ui_act,
)
from gateway.ui.forms import key_form, team_form
from gateway.ui.logs import logs_page
from gateway.ui.session import (
    COOKIE,
    PATH,
    LoginThrottle,
    Session,
    Sessions,
    SessionSigner,
    csrf_ok,
)

log = logging.getLogger("gateway.ui")
HERE = Path(__file__).parent
M = TypeVar("M", bound=BaseModel)
Page = Callable[[Request, Session], Awaitable[Response]]
Issued = tuple[VirtualKey, str, str]  # a key, its new plaintext, and "created" or "rotated"
MAX_FORM_BYTES = 64 * 1024
SECURITY_HEADERS = {
    "content-security-policy": "default-src 'self'; script-src 'self'; style-src 'self'; "
    "img-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
    "form-action 'self'",
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
}


def add_ui_routes(app: FastAPI, engine: Engine) -> None:
    """Serve the dashboard at ``/ui`` (and its static files at ``/ui/static``)."""
    ui = Dashboard(engine)
    app.mount(f"{PATH}/static", StaticFiles(directory=HERE / "static"), name="ui-static")
    table: list[tuple[str, str, Callable[[Request], Awaitable[Response]]]] = [
        ("", "GET", ui.home),
        ("/", "GET", ui.home),
        ("/login", "GET", ui.login_form),
        ("/login", "POST", ui.login),
        ("/logout", "POST", ui.guarded(ui.logout, post=True)),
        ("/spend", "GET", ui.guarded(ui.spend)),
        ("/spend.csv", "GET", ui.guarded(ui.spend_csv)),
        ("/traffic", "GET", ui.guarded(ui.traffic)),
        ("/logs", "GET", ui.guarded(ui.logs)),
        ("/deployments", "GET", ui.guarded(ui.deployments)),
        ("/audit", "GET", ui.guarded(ui.audit)),
        ("/keys", "GET", ui.guarded(ui.keys)),
        ("/keys", "POST", ui.guarded(ui.create_key, post=True)),
        ("/keys/{key_id}", "POST", ui.guarded(ui.update_key, post=True)),
        ("/keys/{key_id}/revoke", "POST", ui.guarded(ui.revoke_key, post=True)),
        ("/keys/{key_id}/rotate", "POST", ui.guarded(ui.rotate_key, post=True)),
        ("/teams", "POST", ui.guarded(ui.create_team, post=True)),
        ("/teams/{team_id}", "POST", ui.guarded(ui.update_team, post=True)),
    ]
    for path, method, handler in table:
        app.add_route(PATH + path, handler, methods=[method])


class Dashboard:
    """The handlers; ``guarded`` checks the session (and, for POSTs, origin and CSRF)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.throttle = LoginThrottle()
        ledger = engine.ledger
        self.sessions = Sessions(SessionStore(ledger.engine) if ledger is not None else None)
        master = engine.config.auth.master_key
        self.signer = (
            SessionSigner(master.get_secret_value(), engine.config.ui.session_hours * 3600)
            if master is not None and master.get_secret_value()
            else None
        )
        self.templates = jinja2.Environment(
            loader=jinja2.FileSystemLoader(HERE / "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )
        self.templates.filters["money"] = views.money
        self.templates.filters["count"] = lambda n: "\u2013" if n is None else f"{n:,}"
        self.templates.filters["usd"] = lambda text: views.money(Decimal(str(text)))

    # -- plumbing --------------------------------------------------------------------------
    def render(
        self, name: str, request: Request, status: int = 200, **context: Any
    ) -> HTMLResponse:
        context.setdefault("session", None)
        html = self.templates.get_template(name).render(request=request, path=PATH, **context)
        return HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS)

    async def session(self, request: Request) -> Session | None:
        """The logged-in session, if the cookie is valid and its key still an admin key."""
        if self.signer is None:
            return None
        session = self.signer.load(request.cookies.get(COOKIE))
        if session is None or not await self.sessions.is_open(session):
            return None
        if session.is_master:
            return session
        if self.engine.keys is None:
            return None
        try:
            key = await self.engine.keys.get_key(session.subject)
        except NotFoundError:
            return None
        usable = key.admin and key.unusable_because(datetime.now(UTC)) is None
        return session if usable and key.key_hash[:16] == session.fingerprint else None

    def guarded(
        self, page: Page, *, post: bool = False
    ) -> Callable[[Request], Awaitable[Response]]:
        async def route(request: Request) -> Response:
            if self.signer is None:
                return self.unavailable(request)
            if post and not same_origin(request):
                return self.render("error.html", request, 403, message="cross-site request refused")
            try:
                session = await self.session(request)
            except store_errors() as exc:
                log.warning("dashboard: the database failed: %s", describe(exc))
                return self.render(
                    "error.html",
                    request,
                    503,
                    message=f"the database could not be reached ({describe(exc)}); retry later",
                )
            if session is None:
                return RedirectResponse(f"{PATH}/login", status_code=303)
            try:
                if post and not csrf_ok(session, _text(await form(request), "csrf")):
                    return self.page(
                        "error.html",
                        request,
                        session,
                        status=403,
                        message="the form expired; reload the page",
                    )
                return await page(request, session)
            except GatewayError as exc:
                return self.page(
                    "error.html", request, session, status=exc.status, message=exc.message
                )
            except IntegrityError as exc:
                return self.page("error.html", request, session, status=409, message=describe(exc))
            except store_errors() as exc:
                log.warning("dashboard: the database failed: %s", describe(exc))
                return self.page(
                    "error.html",
                    request,
                    session,
                    status=503,
                    message=f"the database could not be reached ({describe(exc)}); retry later",
                )

        return route

    def unavailable(self, request: Request) -> Response:
        return self.render(
            "error.html",
            request,
            503,
            message="the dashboard needs auth.master_key (or GATEWAY_MASTER_KEY): without it "
            "the gateway checks no key, so anyone could read and change it",
        )

    def store(self) -> KeyStore:
        if self.engine.keys is None:
            raise key_store_disabled()
        return self.engine.keys

    def admin(self) -> KeyAdmin:
        """The key and team rules, applied to this gateway's store."""
        return KeyAdmin(self.store(), self.engine.auth.forget)

    def page(self, name: str, request: Request, session: Session, **context: Any) -> Response:
        status = context.pop("status", 200)
        return self.render(name, request, status, session=session, **context)

    # -- login -----------------------------------------------------------------------------
    async def home(self, request: Request) -> Response:
        return RedirectResponse(f"{PATH}/spend", status_code=303)

    async def login_form(self, request: Request) -> Response:
        if self.signer is None:
            return self.unavailable(request)
        return self.render("login.html", request, session=None, error=None)

    async def login(self, request: Request) -> Response:
        if self.signer is None:
            return self.unavailable(request)
        if not same_origin(request):
            return self.render("error.html", request, 403, message="cross-site request refused")
        # The client's address as far as trusted proxies tell (server.trusted_proxies).
        address = request.client.host if request.client else "unknown"
        try:
            token = (_text(await form(request), "key") or "").strip()
        except GatewayError as exc:
            return self.render("error.html", request, exc.status, message=exc.message)
        wait = self.throttle.blocked_for(address, token)
        if wait:
            why = f"too many failed logins; try again in {wait:.0f} s"
            return self.render("login.html", request, 429, session=None, error=why)
        try:
            principal = await self.engine.auth.authenticate(token or None, address=address)
        except AuthenticationError:
            principal = None
        except GatewayError as exc:
            return self.render("error.html", request, exc.status, message=exc.message)
        if principal is None or not principal.admin:
            self.throttle.failed(address, token)
            who = None if principal is None else actor_subject(principal.key_id)
            await record_ui_act(self.engine, request, who, "ui.login", None, "refused 401")
            why = (
                "this key is not an admin key; log in with the master key or a key created "
                "with admin: true"
                if principal is not None
                else "that key was not accepted (wrong, revoked or expired)"
            )
            return self.render("login.html", request, 401, session=None, error=why)
        subject = "master" if principal.is_master else str(principal.key_id)
        fingerprint = "" if principal.is_master else hash_key(token)[:16]
        session, cookie = self.signer.issue(subject, fingerprint)
        try:
            await self.sessions.opened(session)
        except store_errors() as exc:
            log.warning("dashboard: the database failed: %s", describe(exc))
            why = f"the database could not be reached ({describe(exc)}); retry later"
            return self.render("error.html", request, 503, message=why)
        await record_ui_act(self.engine, request, subject, "ui.login")
        response = RedirectResponse(f"{PATH}/spend", status_code=303)
        response.set_cookie(
            COOKIE,
            cookie,
            max_age=self.signer.lifetime,
            path=PATH,
            httponly=True,
            samesite="strict",
            secure=is_https(request),
        )
        return response

    async def logout(self, request: Request, session: Session) -> Response:
        await self.sessions.end(session)  # a copy of the cookie stops working too
        await record_ui_act(self.engine, request, session.subject, "ui.logout")
        response = RedirectResponse(f"{PATH}/login", status_code=303)
        response.delete_cookie(COOKIE, path=PATH, httponly=True, samesite="strict")
        return response

    # -- pages -----------------------------------------------------------------------------
    def _ledger_needed(self, request: Request, session: Session) -> Response | None:
        if self.engine.ledger is not None:
            return None
        return self.page(
            "error.html",
            request,
            session,
            status=404,
            message="the spend ledger is disabled (ledger.enabled: false), so there is no "
            "spend or traffic to show",
        )

    def _spend_query(self, request: Request) -> tuple[str, str, str | None]:
        q = request.query_params
        period = q.get("period", "7d")
        by = q.get("by", "model")
        first, last = q.get("from", "").strip(), q.get("to", "").strip()
        if period == "range" or (period not in views.PERIODS and (first or last)):
            # Any days: from … to … (one of them alone means that single day).
            today = datetime.now(UTC).date().isoformat()
            period = f"{first or last or today}..{last or first or today}"
        return (
            period if period in views.PERIODS or ".." in period else "7d",
            by if by in views.DIMENSIONS else "model",
            q.get("team") or None,
        )

    async def spend(self, request: Request, session: Session) -> Response:
        if (refused := self._ledger_needed(request, session)) is not None:
            return refused
        assert self.engine.ledger is not None
        period, by, team = self._spend_query(request)
        await self.engine.ledger.caught_up()
        data = await views.spend_page(self.engine, period, by, team)
        return self.page(
            "spend.html",
            request,
            session,
            periods=views.PERIODS,
            dimensions=views.DIMENSIONS,
            query=request.url.query,
            **data,
        )

    async def spend_csv(self, request: Request, session: Session) -> Response:
        if (refused := self._ledger_needed(request, session)) is not None:
            return refused
        assert self.engine.ledger is not None
        period, by, team = self._spend_query(request)
        await self.engine.ledger.caught_up()
        since, until, _ = views.period_range(period, datetime.now(UTC))
        rows = await self.engine.ledger.spend_report(by, since, until, team=team)  # type: ignore[arg-type]
        names = await group_names(self.engine.keys, by) if self.engine.keys is not None else None
        name = f"spend-by-{by}-{period.replace('..', '-to-')}" + ("-team" if team else "")
        return Response(
            report_csv(rows, by, names),  # type: ignore[arg-type]
            media_type=CSV_TYPE,
            headers={"content-disposition": f'attachment; filename="{name}.csv"'},
        )

    async def traffic(self, request: Request, session: Session) -> Response:
        if (refused := self._ledger_needed(request, session)) is not None:
            return refused
        assert self.engine.ledger is not None
        await self.engine.ledger.caught_up()
        data = await views.traffic_page(self.engine)
        return self.page("traffic.html", request, session, **data)

    async def logs(self, request: Request, session: Session) -> Response:
        if (refused := self._ledger_needed(request, session)) is not None:
            return refused
        assert self.engine.ledger is not None
        await self.engine.ledger.caught_up()
        data = await logs_page(self.engine, request.query_params)
        return self.page("logs.html", request, session, **data)

    async def deployments(self, request: Request, session: Session) -> Response:
        if self.engine.ledger is not None:
            await self.engine.ledger.caught_up()
        data = await views.deployments_page(self.engine)
        return self.page("deployments.html", request, session, **data)

    async def audit(self, request: Request, session: Session) -> Response:
        if not session.is_master:
            return self.page(
                "error.html",
                request,
                session,
                status=403,
                message="the audit trail is for the master key only",
            )
        data = await audit_page_data(self.engine, request)
        return self.page("audit.html", request, session, **data)

    async def keys(
        self,
        request: Request,
        session: Session,
        *,
        status: int = 200,
        created: dict[str, str] | None = None,
        error: str | None = None,
        typed: dict[str, str] | None = None,
    ) -> Response:
        self.store()
        data = await views.keys_page(self.engine)
        return self.page(
            "keys.html",
            request,
            session,
            status=status,
            created=created,
            error=error,
            typed=typed,
            **data,
        )

    # -- changes ---------------------------------------------------------------------------
    @staticmethod
    def _validated(model: type[M], body: dict[str, Any]) -> M:
        return validated(model, body, "form")

    async def _changed(
        self,
        request: Request,
        session: Session,
        work: Awaitable[Issued | None],
        *,
        keep_typed: bool = False,
    ) -> Response:
        """Run a change. A mistake shows the keys page with the admin API's message (and,
        with ``keep_typed``, the new-key form filled in as it was sent); a new plaintext is
        shown on the page that answers (never in a URL, never again); anything else goes
        back to the list."""
        action, target = ui_act(request)
        try:
            issued = await work
        except GatewayError as exc:
            fields = await form_fields(request, accepted=False)
            outcome = f"refused {exc.status}" + (f" {exc.code}" if exc.code else "")
            await record_ui_act(
                self.engine, request, session.subject, action, target, outcome, fields
            )
            if exc.status >= 500:
                raise
            typed = None
            if keep_typed:
                sent = await form(request)
                typed = {k: v for k, v in sent.items() if isinstance(v, str) and k != "csrf"}
            return await self.keys(
                request, session, status=exc.status, error=exc.message, typed=typed
            )
        if target is None and issued is not None:
            target = issued[0].id
        accepted = await form_fields(request, accepted=True)
        await record_ui_act(self.engine, request, session.subject, action, target, "ok", accepted)
        if issued is None:
            return RedirectResponse(f"{PATH}/keys", status_code=303)
        key, plaintext, action = issued
        created = {"name": key.name, "id": key.id, "key": plaintext, "action": action}
        return await self.keys(request, session, created=created)

    async def create_key(self, request: Request, session: Session) -> Response:
        async def work() -> Issued:
            spec = self._validated(KeySpec, key_form(await form(request), True))
            key, plaintext = await self.admin().new_key(spec)
            return key, plaintext, "created"

        return await self._changed(request, session, work(), keep_typed=True)

    async def update_key(self, request: Request, session: Session) -> Response:
        async def work() -> None:
            change = self._validated(KeyChange, key_form(await form(request), False))
            await self.admin().change_key(request.path_params["key_id"], change)

        return await self._changed(request, session, work())

    async def revoke_key(self, request: Request, session: Session) -> Response:
        async def work() -> None:
            await self.admin().revoke(request.path_params["key_id"])

        return await self._changed(request, session, work())

    async def rotate_key(self, request: Request, session: Session) -> Response:
        async def work() -> Issued:
            key, plaintext = await self.admin().rotate(request.path_params["key_id"])
            return key, plaintext, "rotated"

        return await self._changed(request, session, work())

    async def create_team(self, request: Request, session: Session) -> Response:
        async def work() -> None:
            spec = self._validated(TeamSpec, team_form(await form(request), True))
            await self.admin().new_team(spec)

        return await self._changed(request, session, work())

    async def update_team(self, request: Request, session: Session) -> Response:
        async def work() -> None:
            change = self._validated(TeamChange, team_form(await form(request), False))
            await self.admin().change_team(request.path_params["team_id"], change)

        return await self._changed(request, session, work())


def same_origin(request: Request) -> bool:
    """A POST from a page of this gateway (or a client that sends no Origin at all)."""
    origin = request.headers.get("origin")
    if origin is None:
        return True
    host = request.headers.get("host", "")
    return origin in (f"http://{host}", f"https://{host}")


def is_https(request: Request) -> bool:
    proto = request.headers.get("x-forwarded-proto", request.url.scheme)
    return proto.split(",")[0].strip() == "https"


async def form(request: Request) -> FormData:
    """The posted form, refused (413) past MAX_FORM_BYTES: a dashboard form is small."""
    length = request.headers.get("content-length", "")
    if not length.isdigit() or int(length) > MAX_FORM_BYTES:
        raise PayloadTooLargeError(
            f"a dashboard form is at most {MAX_FORM_BYTES} bytes, with a Content-Length"
        )
    return await request.form()


def _text(data: FormData, name: str) -> str | None:
    value = data.get(name)
    return value if isinstance(value, str) else None
