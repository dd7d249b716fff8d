"""A static HTML gallery of the persons, to open from the file system in any browser.

One page, no server and no external assets: thumbnails are linked by paths relative to the page, so the
gallery stays correct as long as it sits beside the storage it was written from.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

import structlog
from jinja2 import Environment, PackageLoader, select_autoescape

from image_grouping.handlers.ports import UnitOfWork, UnitOfWorkFactory

log = structlog.get_logger(__name__)

GALLERY_FILE_NAME = "index.html"
FACES_PER_PERSON = 12  # thumbnails in a person's strip
UNASSIGNED_FACES_SHOWN = 120

_templates = Environment(
    loader=PackageLoader("image_grouping.report", "templates"),
    autoescape=select_autoescape(["html", "j2"]),
    trim_blocks=True,
    lstrip_blocks=True,
)


@dataclass(frozen=True, slots=True)
class Thumbnail:
    face_id: int
    path: Path  # absolute path of the JPEG


@dataclass(frozen=True, slots=True)
class PersonCard:
    person_id: int
    title: str  # the name given by hand, or "Person N" (N: the person's stable id)
    named: bool
    face_count: int
    cover: Thumbnail | None
    faces: list[Thumbnail]


@dataclass(frozen=True, slots=True)
class Gallery:
    persons: list[PersonCard]
    unassigned: list[Thumbnail]
    hidden_count: int


async def load_gallery(uow: UnitOfWork, storage: Path) -> Gallery:
    """The visible persons, most faces first, each with its cover and a strip of its best faces.

    `storage` is the absolute SYSTEM_STORAGE that the stored thumbnail paths are relative to.
    """

    def thumbnail(face_id: int, stored_path: str) -> Thumbnail:
        return Thumbnail(face_id, storage / stored_path)  # an absolute stored path stays as it is

    cards, hidden_count = [], 0
    for person in await uow.persons.list():
        if person.hidden:
            hidden_count += 1
            continue
        if person.face_count == 0:
            continue
        faces = [thumbnail(*row) for row in await uow.faces.thumbnails(person.id, FACES_PER_PERSON)]
        # The cover chosen by hand or by grouping; the best detection when it is not in the strip.
        best = faces[0] if faces else None
        cover = next((face for face in faces if face.face_id == person.cover_face_id), best)
        cards.append(
            PersonCard(
                person_id=person.id,
                title=person.name or f"Person {person.id}",
                named=bool(person.name),
                face_count=person.face_count,
                cover=cover,
                faces=faces,
            )
        )
    cards.sort(key=lambda card: (-card.face_count, card.person_id))
    unassigned = [thumbnail(*row) for row in await uow.faces.thumbnails(None, UNASSIGNED_FACES_SHOWN)]
    return Gallery(cards, unassigned, hidden_count)


def render_gallery(gallery: Gallery, out_dir: Path, generated_at: datetime) -> str:
    """The page's HTML, with thumbnail links relative to `out_dir`: the absolute folder of the page."""

    def href(thumbnail: Thumbnail) -> str:
        return quote(Path(os.path.relpath(thumbnail.path, out_dir)).as_posix())

    template = _templates.get_template("gallery.html.j2")
    return template.render(
        gallery=gallery,
        href=href,
        face_total=sum(card.face_count for card in gallery.persons),
        unassigned_limit=UNASSIGNED_FACES_SHOWN,
        generated_at=generated_at.strftime("%Y-%m-%d %H:%M UTC"),
    )


def _folders(storage: Path, out: Path | None) -> tuple[Path, Path]:
    storage = storage.resolve()
    return storage, (out if out is not None else storage / "report").resolve()


async def write_gallery(unit_of_work: UnitOfWorkFactory, storage: Path, out: Path | None = None) -> Path:
    """Write `index.html` into `out` (default: `storage`/report) and return its path; thumbnail paths
    are stored relative to `storage` (SYSTEM_STORAGE)."""
    storage, out_dir = _folders(storage, out)
    async with unit_of_work() as uow:
        gallery = await load_gallery(uow, storage)
    out_dir.mkdir(parents=True, exist_ok=True)
    page = out_dir / GALLERY_FILE_NAME
    page.write_text(render_gallery(gallery, out_dir, datetime.now(UTC)), encoding="utf-8")
    log.info(
        "gallery written",
        path=str(page),
        persons=len(gallery.persons),
        unassigned_shown=len(gallery.unassigned),
        hidden=gallery.hidden_count,
    )
    return page
