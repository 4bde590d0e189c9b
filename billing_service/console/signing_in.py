"""Signing in and out: an admin API key typed into the sign-in form becomes the session cookie.

Attempts go through the same failed-authentication limit per client address as API calls
(`auth.verified_key`); a valid key of another scope is refused without a session.
"""

from __future__ import annotations

import time

import structlog
from starlette.requests import Request
from starlette.responses import Response

from billing_service.auth import verified_key
from billing_service.console import session as sessions
from billing_service.console._data import writer
from billing_service.console._web import (
    Form,
    current_session,
    read_form,
    redirect,
    render,
    secure_cookies,
    signed_in,
)
from billing_service.console.session import Session
from billing_service.errors import RateLimited, Unauthenticated
from billing_service.services import api_keys
from billing_service.services.api_keys import Scope
from billing_service.state import app_state

logger = structlog.get_logger(__name__)


def _sign_in_form(request: Request, *, error: str | None = None, status: int = 200) -> Response:
    """The form, with a fresh token in its field and in the sign-in cookie."""
    token = sessions.new_sign_in_token()
    response = render(request, "sign_in.html", {"token": token, "error": error}, status=status)
    response.set_cookie(
        sessions.SIGN_IN_COOKIE,
        token,
        max_age=sessions.SIGN_IN_SECONDS,
        path=sessions.COOKIE_PATH,
        secure=secure_cookies(request),
        httponly=True,
        samesite="strict",
    )
    return response


async def sign_in_page(request: Request) -> Response:
    if await current_session(request) is not None:
        return redirect("/console")
    return _sign_in_form(request)


async def sign_in(request: Request) -> Response:
    form = await read_form(request)
    expected = sessions.sign_in_token(request.cookies.get(sessions.SIGN_IN_COOKIE))
    if expected is None or not sessions.csrf_matches(expected, form.get("csrf")):
        logger.warning("console.csrf_refused", path=request.url.path)
        return _sign_in_form(
            request, error="The form expired or was not sent from this page; try again.",
            status=403,
        )  # fmt: skip
    try:
        key = await verified_key(request, form.get("key", "").strip() or None)
    except RateLimited:
        return _sign_in_form(
            request, error="Too many failed sign-ins from this address; wait a minute.",
            status=429,
        )  # fmt: skip
    except Unauthenticated:
        return _sign_in_form(request, error="That is not a valid API key.", status=401)
    if Scope.ADMIN not in key.scopes:
        logger.warning("console.sign_in_refused", key_id=str(key.id), reason="not_admin")
        return _sign_in_form(request, error="Only an admin key can sign in.", status=403)
    found = await api_keys.usable_key_and_hash(writer(request), key.id)
    if found is None:  # revoked in between
        return _sign_in_form(request, error="That is not a valid API key.", status=401)
    settings = app_state(request)["settings"]
    value = sessions.cookie_value(settings, *found, now=time.time())
    response = redirect("/console")
    response.set_cookie(
        sessions.COOKIE,
        value,
        max_age=settings.console_session_minutes * 60,
        path=sessions.COOKIE_PATH,
        secure=secure_cookies(request),
        httponly=True,
        samesite="strict",
    )
    response.delete_cookie(
        sessions.SIGN_IN_COOKIE,
        path=sessions.COOKIE_PATH,
        secure=secure_cookies(request),
        httponly=True,
        samesite="strict",
    )
    logger.info("console.signed_in", key_id=str(key.id))
    return response


@signed_in
async def sign_out(request: Request, session: Session, _form: Form) -> Response:
    response = redirect("/console/sign-in")
    response.delete_cookie(
        sessions.COOKIE,
        path=sessions.COOKIE_PATH,
        secure=secure_cookies(request),
        httponly=True,
        samesite="strict",
    )
    logger.info("console.signed_out", key_id=str(session.key.id))
    return response
