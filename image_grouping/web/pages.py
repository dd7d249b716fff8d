"""The browser pages: HTML rendered on the server from the same queries as the API, with a small script
(static/people.js) that sends the edits to the API and redraws what changed. No build step.

Pages are paged so a library of 10,000 faces stays fast: 100 persons or 200 faces a page, thumbnails
loaded lazily by the browser as they scroll into view.
"""

from __future__ import annotations

import hmac
from typing import Annotated, Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from image_grouping.bootstrap import suggestion_params
from image_grouping.handlers import queries
from image_grouping.models.views import PersonSummary
from image_grouping.web.api import MAX_ID, LibraryAdapters
from image_grouping.web.app import TOKEN_COOKIE, refuse_cross_site, require_sign_in, templates

PERSONS_PER_PAGE = 100
FACES_PER_PAGE = 200
UNASSIGNED_PER_PAGE = 60
MERGE_SUGGESTIONS_SHOWN = 50

router = APIRouter(include_in_schema=False)
signed_in = [Depends(require_sign_in)]


def served_library(request: Request) -> LibraryAdapters:
    """The pages show the library `serve --library` names (their links and calls name none)."""
    return LibraryAdapters(request.app.state.adapters, request.app.state.library)


Deps = Annotated[LibraryAdapters, Depends(served_library)]
Id = Annotated[int, Path(ge=1, le=MAX_ID)]
PageNumber = Annotated[int, Query(ge=1, le=10**9)]


def _pages(page: int, per_page: int, total: int) -> dict[str, Any]:
    last = max(1, -(-total // per_page))
    return {"page": page, "last_page": last, "per_page": per_page, "total": total}


def title(person: PersonSummary | None, person_id: int | None = None) -> str:
    """A person's name, or "Unnamed" with its id (so two unnamed persons can be told apart)."""
    if person is not None and person.name:
        return person.name
    return f"Unnamed #{person.id if person is not None else person_id}"


@router.get("/", response_class=HTMLResponse, dependencies=signed_in)
async def persons_grid(request: Request, deps: Deps, page: PageNumber = 1, hidden: bool = False) -> Response:
    """Every person (hidden ones on request): cover, name or "Unnamed", face count; named first."""
    offset = (page - 1) * PERSONS_PER_PAGE
    persons = await queries.list_persons(
        deps.unit_of_work, include_hidden=hidden, offset=offset, limit=PERSONS_PER_PAGE
    )
    total = await queries.count_persons(deps.unit_of_work, include_hidden=hidden)
    context = {"persons": persons, "hidden": hidden, "title": title, **_pages(page, PERSONS_PER_PAGE, total)}
    return templates.TemplateResponse(request, "persons.html.j2", context)


@router.get("/persons/{person_id}", response_class=HTMLResponse, dependencies=signed_in)
async def person_page(request: Request, deps: Deps, person_id: Id, page: PageNumber = 1) -> Response:
    """A person and its faces (a page of them), each linking to its photo."""
    offset = (page - 1) * FACES_PER_PAGE
    person = await queries.show_person(deps.unit_of_work, person_id, offset=offset, limit=FACES_PER_PAGE)
    context = {"person": person, "title": title, **_pages(page, FACES_PER_PAGE, person.face_count)}
    return templates.TemplateResponse(request, "person.html.j2", context)


@router.get("/photos/{image_id}", response_class=HTMLResponse, dependencies=signed_in)
async def photo_page(request: Request, deps: Deps, image_id: Id, face: int | None = None) -> Response:
    """The photo with every face's box drawn and named after its person."""
    photo = await queries.image_detail(deps.unit_of_work, image_id)
    person_ids = sorted({f.person_id for f in photo.faces if f.person_id is not None})
    persons = {
        person_id: await queries.show_person(deps.unit_of_work, person_id, limit=1)
        for person_id in person_ids
    }
    context = {"photo": photo, "persons": persons, "title": title, "selected": face}
    return templates.TemplateResponse(request, "photo.html.j2", context)


@router.get("/unassigned", response_class=HTMLResponse, dependencies=signed_in)
async def unassigned_page(request: Request, deps: Deps, page: PageNumber = 1) -> Response:
    """Faces without a person; for each the person it probably is, to accept or reject."""
    offset = (page - 1) * UNASSIGNED_PER_PAGE
    faces = await queries.unassigned_faces(
        deps.unit_of_work, suggestion_params(deps.settings), offset=offset, limit=UNASSIGNED_PER_PAGE + 1
    )
    context = {
        "faces": faces[:UNASSIGNED_PER_PAGE],
        "more": len(faces) > UNASSIGNED_PER_PAGE,
        "page": page,
        "title": title,
    }
    return templates.TemplateResponse(request, "unassigned.html.j2", context)


@router.get("/suggestions", response_class=HTMLResponse, dependencies=signed_in)
async def suggestions_page(request: Request, deps: Deps) -> Response:
    """Pairs of persons that are probably one, to merge."""
    pairs = await queries.merge_suggestions(
        deps.unit_of_work, suggestion_params(deps.settings), limit=MERGE_SUGGESTIONS_SHOWN
    )
    wanted = {person for pair in pairs for person in (pair.person_a, pair.person_b)}
    persons = (
        {p.id: p for p in await queries.list_persons(deps.unit_of_work) if p.id in wanted} if wanted else {}
    )
    rows = []
    for pair in pairs:
        a, b = persons.get(pair.person_a), persons.get(pair.person_b)
        if a is not None and b is not None:
            rows.append((pair, *_kept_first(a, b)))
    context = {"rows": rows, "title": title}
    return templates.TemplateResponse(request, "suggestions.html.j2", context)


def _kept_first(a: PersonSummary, b: PersonSummary) -> tuple[PersonSummary, PersonSummary]:
    """Which of two persons a merge keeps: the named one, else the one with more faces."""
    if bool(a.name) != bool(b.name):
        return (a, b) if a.name else (b, a)
    return (a, b) if a.face_count >= b.face_count else (b, a)


# --- signing in (only when the server has an API_TOKEN) -------------------------------------------------


@router.get("/sign-in", response_class=HTMLResponse)
async def sign_in_page(request: Request, failed: bool = False) -> Response:
    return templates.TemplateResponse(request, "sign-in.html.j2", {"failed": failed})


@router.post("/sign-in")
async def sign_in(request: Request) -> Response:
    """The token typed in the form, kept in a cookie the browser sends with every request of this site
    only (SameSite=Strict: no other site can make it send it), unreadable by scripts."""
    refuse_cross_site(request)
    form = parse_qs((await request.body()).decode("utf-8", "replace"))
    given = (form.get("token") or [""])[0]
    expected = request.app.state.token
    if expected is None:
        return RedirectResponse("/", status_code=303)
    if not hmac.compare_digest(given.encode(), expected.encode()):
        return RedirectResponse("/sign-in?failed=true", status_code=303)
    response = RedirectResponse("/", status_code=303)
    response.set_cookie(
        TOKEN_COOKIE, given, httponly=True, samesite="strict", secure=request.url.scheme == "https"
    )
    return response
