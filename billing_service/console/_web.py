"""The console's HTTP plumbing: templates, security headers, the session guard with its CSRF
check, form bodies, and the error page every refused action renders."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import jinja2
import structlog
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from billing_service.console import session as sessions
from billing_service.console._data import writer
from billing_service.console.session import Session
from billing_service.errors import (
    BillingError,
    MalformedRequest,
    UnsupportedMediaType,
    ValidationFailed,
)
from billing_service.state import app_state

logger = structlog.get_logger(__name__)

HERE = Path(__file__).parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"
SIGN_IN_PATH = "/console/sign-in"
MAX_FORM_FIELDS = 20

# No inline script or style anywhere, no framing, forms post only here, nothing cached.
HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}
# Currencies Stripe counts in whole units (no minor unit).
_ZERO_DECIMAL = frozenset(
    {
        "bif", "clp", "djf", "gnf", "jpy", "kmf", "krw", "mga",
        "pyg", "rwf", "ugx", "vnd", "vuv", "xaf", "xof", "xpf",
    }
)  # fmt: skip

Form = Mapping[str, str]
Handler = Callable[[Request, Session, Form], Awaitable[Response]]


def money(amount: int | Decimal, currency: str) -> str:
    """Minor units as an amount with its currency code: 1999, 'eur' → '19.99 EUR'."""
    if currency.lower() in _ZERO_DECIMAL:
        return f"{amount:,} {currency.upper()}"
    return f"{Decimal(amount) / 100:,.2f} {currency.upper()}"


def when(moment: datetime | None) -> str:
    return "—" if moment is None else moment.strftime("%Y-%m-%d %H:%M UTC")


def day(moment: datetime | None) -> str:
    return "—" if moment is None else moment.strftime("%Y-%m-%d")


@functools.cache
def environment() -> jinja2.Environment:
    """Templates with autoescaping on: every value a page shows is escaped unless it is
    `Markup` the code built escaped (the SVG charts)."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(money=money, when=when, day=day)
    return env


def secure_cookies(request: Request) -> bool:
    """Cookies are `Secure` everywhere but in development (plain http on localhost)."""
    return app_state(request)["settings"].env.value != "development"


def render(
    request: Request,
    template: str,
    context: Mapping[str, Any] | None = None,
    *,
    session: Session | None = None,
    status: int = 200,
) -> HTMLResponse:
    settings = app_state(request)["settings"]
    html = (
        environment()
        .get_template(template)
        .render(
            path=request.url.path,
            session=session,
            livemode=settings.stripe_livemode,
            **(context or {}),
        )
    )
    return HTMLResponse(html, status_code=status, headers=HEADERS)


def redirect(location: str) -> RedirectResponse:
    return RedirectResponse(location, status_code=303, headers=HEADERS)


def message(
    request: Request, title: str, text: str, *, status: int, session: Session | None = None
) -> HTMLResponse:
    return render(
        request, "message.html", {"title": title, "text": text}, session=session, status=status
    )


async def read_form(request: Request) -> dict[str, str]:
    """An urlencoded form body (the only kind the console's forms send): each field's first
    value; no body is an empty form. Anything else is refused with the problem's status."""
    body = await request.body()
    if not body:
        return {}
    content_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        raise UnsupportedMediaType("The console's forms are sent urlencoded.")
    try:
        text = body.decode()
        fields = parse_qs(
            text, keep_blank_values=True, strict_parsing=False, max_num_fields=MAX_FORM_FIELDS
        )
    except (UnicodeDecodeError, ValueError):
        raise MalformedRequest("The form could not be read.") from None
    return {name: values[0] for name, values in fields.items()}


async def current_session(request: Request) -> Session | None:
    """The session the request's cookie proves, checked against the primary pool."""
    return await sessions.read_session(
        writer(request), app_state(request)["settings"], request.cookies.get(sessions.COOKIE)
    )


def error_text(error: BillingError) -> str:
    text = error.detail or error.title
    if isinstance(error, ValidationFailed):
        text += " " + "; ".join(f"{e.field}: {e.message}" for e in error.errors)
    return text


def signed_in(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """Guard a page or action: without a valid admin session a page sends the browser to the
    sign-in page and an action is refused (403); an action's form must carry the session's
    CSRF token. Errors the services raise become an error page with their status."""

    @functools.wraps(handler)
    async def endpoint(request: Request) -> Response:
        session = await current_session(request)
        if session is None:
            if request.method == "GET":
                return redirect(SIGN_IN_PATH)
            return message(request, "Signed out", "Sign in again to do this.", status=403)
        structlog.contextvars.bind_contextvars(key_id=str(session.key.id))
        form: dict[str, str] = {}
        if request.method == "POST":
            try:
                form = await read_form(request)
            except BillingError as refused:
                return message(
                    request, refused.title, error_text(refused), status=refused.status,
                    session=session,
                )  # fmt: skip
            if not sessions.csrf_matches(session.csrf, form.get("csrf")):
                logger.warning("console.csrf_refused", path=request.url.path)
                return message(
                    request,
                    "Form refused",
                    "The form's security token is missing or wrong; reload the page and try again.",
                    status=403,
                    session=session,
                )
        try:
            return await handler(request, session, form)
        except BillingError as error:
            return message(
                request, error.title, error_text(error), status=error.status, session=session
            )

    return endpoint
