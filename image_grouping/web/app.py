"""The People web app: the HTTP API under /api (OpenAPI at /docs) and the browser pages, one process.

`create_app(settings)` bootstraps the real adapters when the app starts (the schema brought up to date, as
every entry point does) and closes them when it stops. The HTTP layer is thin: an endpoint calls one
handler or query of image_grouping.handlers; a refusal (BadInputError) becomes a 4xx answer with its
message and reason: an unknown id 404, an invalid command 422, a model pack mismatch 409.

With API_TOKEN set, every /api request and every page needs it: as `Authorization: Bearer <token>`
(API clients), or as the cookie the sign-in page sets (the browser, whose <img> requests carry no header).
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.middleware.trustedhost import TrustedHostMiddleware

from image_grouping.config import Settings
from image_grouping.errors import (
    BadInputError,
    ImageNotFoundError,
    ImagePathError,
    InvalidCommandError,
    ModelPackMismatchError,
    OtherLibraryError,
    UnknownFaceError,
    UnknownImageError,
    UnknownPersonError,
)
from image_grouping.models.messages import DEFAULT_LIBRARY

HERE = Path(__file__).resolve().parent
TOKEN_COOKIE = "image_grouping_token"

templates = Jinja2Templates(directory=HERE / "templates")
_bearer = HTTPBearer(auto_error=False, description="API_TOKEN, when the server was started with one.")


class NotSignedIn(Exception):
    """A page was asked for without the token: the browser goes to the sign-in page."""


class Unauthorized(Exception):
    """An /api request without the token: 401."""


def status_of(error: BadInputError) -> int:
    """The HTTP status of a refusal."""
    if isinstance(error, UnknownPersonError | UnknownFaceError | UnknownImageError | ImageNotFoundError):
        return 404
    if isinstance(error, ImagePathError | OtherLibraryError):
        return 403
    if isinstance(error, ModelPackMismatchError):
        return 409
    if isinstance(error, InvalidCommandError):
        return 422
    return 400


def _token_matches(given: str | None, expected: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


def _signed_in(request: Request, credentials: HTTPAuthorizationCredentials | None) -> bool:
    expected = request.app.state.token
    if expected is None:
        return True
    given = credentials.credentials if credentials is not None else request.cookies.get(TOKEN_COOKIE)
    return _token_matches(given, expected)


async def require_token(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    """The /api guard: 401 without the right token (when there is one); an edit sent by a page of
    another site is refused."""
    if not _signed_in(request, credentials):
        raise Unauthorized
    refuse_cross_site(request)


SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}


def refuse_cross_site(request: Request) -> None:
    """Another site's page may make the browser send a form or a bodyless request here (to 127.0.0.1,
    with the sign-in cookie): browsers say where such a request comes from (Origin, Sec-Fetch-Site), and
    an edit from elsewhere is refused. Clients that are no browser send neither header."""
    if request.method in SAFE_METHODS:
        return
    origin = request.headers.get("origin")
    fetch_site = request.headers.get("sec-fetch-site")
    if origin is not None and urlsplit(origin).netloc != request.headers.get("host"):
        raise CrossSite
    if fetch_site is not None and fetch_site not in ("same-origin", "none"):
        raise CrossSite


class CrossSite(Exception):
    """An edit sent from another site's page."""


async def require_sign_in(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    """The pages' guard: without the right token, the sign-in page."""
    if not _signed_in(request, credentials):
        raise NotSignedIn


def create_app(settings: Settings, *, host: str | None = None, library: str = DEFAULT_LIBRARY) -> FastAPI:
    """The app over the database and storage `settings` name (the adapters are built when it starts).
    A request is of the library its `library` query parameter names, else of `library`.

    Listening on a loopback `host`, it answers only requests addressed to that host by name or number:
    a page of another site whose name was made to point at 127.0.0.1 (DNS rebinding) gets nothing.
    """
    from image_grouping.bootstrap import bootstrap
    from image_grouping.web import api, pages
    from image_grouping.web.files import WebFiles

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with bootstrap(settings, local_files=True) as adapters:
            app.state.adapters = adapters
            app.state.files = WebFiles(settings, adapters.files)
            yield

    app = FastAPI(
        title="image-grouping People",
        summary="See and correct the persons found in the photos: the People view's HTTP API.",
        version=_version(),
        lifespan=lifespan,
    )
    app.state.token = settings.api_token.get_secret_value() if settings.api_token else None
    app.state.library = library

    @app.exception_handler(BadInputError)
    async def refused(request: Request, error: BadInputError) -> Response:
        status = status_of(error)
        if request.url.path.startswith("/api/"):
            return JSONResponse({"detail": str(error), "reason": error.reason}, status_code=status)
        return templates.TemplateResponse(
            request, "error.html.j2", {"message": str(error), "status": status}, status_code=status
        )

    @app.exception_handler(Unauthorized)
    async def unauthorized(request: Request, error: Unauthorized) -> Response:
        return JSONResponse(
            {"detail": "a valid bearer token (API_TOKEN) is required", "reason": "unauthorized"},
            status_code=401,
            headers={"WWW-Authenticate": "Bearer"},
        )

    @app.exception_handler(CrossSite)
    async def cross_site(request: Request, error: CrossSite) -> Response:
        return JSONResponse(
            {"detail": "an edit from another site's page is refused", "reason": "cross_site"},
            status_code=403,
        )

    @app.exception_handler(NotSignedIn)
    async def not_signed_in(request: Request, error: NotSignedIn) -> Response:
        return RedirectResponse("/sign-in", status_code=303)

    if host is not None and is_loopback(host):
        names = ["127.0.0.1", "localhost", "::1", "[::1]", host]
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=names)
    app.include_router(api.router)
    app.include_router(pages.router)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    return app


def is_loopback(host: str) -> bool:
    """127.0.0.1, ::1, localhost: only this machine can reach it."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


def _version() -> str:
    from importlib.metadata import version

    return version("image-grouping")
