"""The People web app in a real Chromium (Debian's, driven by Playwright): real LFW photos scanned by
`image-grouping scan`, then through the pages alone a person is renamed, two persons are merged, a face is
moved to another person, a face is rejected ("not this person"), a face is split off into a new person and
the merge suggestion that follows is accepted, and a person is forgotten after its confirmation step.
The database is then checked, and again after a recluster, which must keep every edit.

The screenshots of the persons grid and of a person page are taken here: into the test's own folder, and
into docs/ (shown by the README) only with UPDATE_SCREENSHOTS=1, so that a test run leaves the working tree
as it was.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from sqlalchemy import create_engine, select
from web_library import build_library, web_settings

from image_grouping.config import Settings, load_settings
from image_grouping.storage.schema import cannot_links, faces, persons
from image_grouping.web import create_app

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
REPO_ROOT = Path(__file__).resolve().parents[2]
README_SCREENSHOTS = REPO_ROOT / "docs"
# The README's screenshots show the group photos, whose licences are stated (Apache-2.0, MIT, BSL-1.0;
# see ../shared/eval/README.md), not LFW's news photos.
SCREENSHOT_PHOTOS = "groups"
# Five people with 8-9 photos each, and three people with one photo (faces nobody else has).
PEOPLE = ["Vaclav_Havel", "Hugh_Grant", "Sheryl_Crow", "Robert_Redford", "Colin_Farrell"]
LONERS = ["Aaron_Eckhart", "Adelina_Avila", "Alanna_Ubach"]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        CHROMIUM is None, reason="chromium is not installed (scripts/install-system-packages)"
    ),
]


@dataclass
class Server:
    url: str
    root: Path
    database: str

    def rows(self, query: Any) -> list[Any]:
        # A plain (synchronous) engine: Playwright's sync API keeps an event loop running in this thread.
        engine = create_engine(self.database)
        try:
            with engine.connect() as connection:
                return list(connection.execute(query).all())
        finally:
            engine.dispose()

    def persons(self) -> dict[int, tuple[str | None, int]]:
        """Each person's name and face count."""
        counts: dict[int, int] = {}
        for (person,) in self.rows(select(faces.c.person_id).where(faces.c.person_id.is_not(None))):
            counts[person] = counts.get(person, 0) + 1
        return {row.id: (row.name, counts.get(row.id, 0)) for row in self.rows(select(persons))}

    def faces_of(self, person: int) -> list[int]:
        return sorted(row.id for row in self.rows(select(faces.c.id).where(faces.c.person_id == person)))

    def person_of(self, face: int) -> tuple[int | None, str]:
        (row,) = self.rows(select(faces.c.person_id, faces.c.assigned_by).where(faces.c.id == face))
        return row.person_id, row.assigned_by


def command(root: Path, *arguments: str) -> None:
    """The console script, as a user runs it (its own process, with its own logging)."""
    environment = os.environ | {"SYSTEM_STORAGE": str(root / "data"), "LOG_ROOT": str(root / "logs")}
    environment.pop("DATABASE_URL", None)
    script = Path(sys.executable).with_name("image-grouping")
    done = subprocess.run([script, *arguments], env=environment, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _photos(eval_dir: Path, folder: Path) -> Path:
    """A folder of links to the chosen LFW photos (the evaluation set is read, never copied)."""
    folder.mkdir()
    for person in PEOPLE + LONERS:
        for photo in sorted((eval_dir / "identity" / person).glob("*.jpg"))[: 9 if person in PEOPLE else 1]:
            (folder / photo.name).symlink_to(photo)
    return folder


@contextmanager
def scanned(root: Path, photos: Path) -> Iterator[Server]:
    """`image-grouping scan` of the folder into a new database, served."""
    database = f"sqlite:///{root / 'people.sqlite3'}"
    command(root, "scan", str(photos), "--db", database, "--no-report")
    settings = load_settings(database_url=database, system_storage=root / "data", log_root=root / "logs")
    with serving(settings) as url:
        yield Server(url, root, database)


@pytest.fixture(scope="module")
def server(eval_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("web-browser")
    with scanned(root, _photos(eval_dir, root / "photos")) as server:
        yield server


@contextmanager
def serving(settings: Settings) -> Iterator[str]:
    """The app on a free port of 127.0.0.1, in a thread (uvicorn, as `image-grouping serve` runs it)."""
    port = _free_port()
    app = create_app(settings, host="127.0.0.1")  # as `serve` makes it
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on")
    running = uvicorn.Server(config)
    thread = threading.Thread(target=running.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not running.started:
        assert thread.is_alive(), "the web app stopped"
        assert time.monotonic() < deadline, "the web app did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        running.should_exit = True
        thread.join(timeout=30)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
        )
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(30_000)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        yield page
    finally:
        context.close()
    assert errors == [], f"the pages' script failed: {errors}"


def said(page: Any, text: str) -> None:
    """The page's status line says `text` (the edit's answer came back)."""
    from playwright.sync_api import expect

    expect(page.locator("#status")).to_have_text(text)
    assert "error" not in (page.locator("#status").get_attribute("class") or "")


def test_correcting_persons_in_the_browser(server: Server, page: Any) -> None:
    from playwright.sync_api import expect

    before = server.persons()
    by_size = sorted((person for person in before if before[person][1] >= 3), key=lambda p: -before[p][1])
    assert len(by_size) >= 4, f"the scan should find the five people: {before}"
    alice, halved, receiver, forgotten = by_size[:4]
    alice_faces = server.faces_of(alice)
    moved, rejected, split = alice_faces[-1], alice_faces[-2], alice_faces[-3]

    # The grid: every person with a cover whose thumbnail loaded, largest first while none is named.
    page.goto(server.url + "/")
    cards = page.locator(".card[data-person-id]")
    expect(cards.first).to_be_visible()
    assert int(cards.first.get_attribute("data-person-id")) == by_size[0]
    assert page.locator(".card .name.unnamed").first.inner_text() == "Unnamed"

    # Rename, inline on the person's page.
    page.locator(f'.card[data-person-id="{alice}"] a.cover').click()
    expect(page).to_have_url(f"{server.url}/persons/{alice}")
    page.fill("#name", "Alice Example")
    page.click("text=Save name")
    said(page, "Name saved.")
    assert server.persons()[alice][0] == "Alice Example"

    # Move a face to another person, picked from the list the dialog offers.
    page.reload()
    page.check(f'[data-face-id="{moved}"] [data-select-face]')
    page.click("[data-action=move-selected]")
    page.fill("#move-target", f"Unnamed #{receiver}")
    page.click("#move-dialog button[value=move]")
    said(page, "Moved.")
    expect(page.locator(f'.face[data-face-id="{moved}"]')).to_have_count(0)
    assert server.person_of(moved) == (receiver, "manual")

    # "Not this person".
    page.click(f'[data-face-id="{rejected}"] [data-action=reject]')
    said(page, "Face removed from this person.")
    assert server.person_of(rejected) == (None, "manual")
    assert server.rows(select(cannot_links.c.person_id).where(cannot_links.c.face_id == rejected)) == [
        (alice,)
    ]

    # A face split off into a new person: it is so like Alice that a merge is suggested, and accepted.
    page.check(f'[data-face-id="{split}"] [data-select-face]')
    page.click("[data-action=move-selected]")
    page.click("#move-dialog button[value=move]")  # left empty: a new person
    said(page, "Moved to a new person.")
    newcomer, _ = server.person_of(split)
    assert newcomer not in before

    page.click("text=Merge suggestions")
    pair = page.locator(f'.pair:has([data-target="{alice}"][data-source="{newcomer}"])')
    expect(pair).to_have_count(1)
    pair.locator("[data-action=accept-merge]").click()
    said(page, "Merged.")
    expect(pair).to_have_count(0)
    assert server.person_of(split) == (alice, "manual")
    assert newcomer not in server.persons()

    # One person in two (made here by hand: three of its faces moved to a new person together): select
    # both in the grid and merge them, confirming.
    halved_faces = server.faces_of(halved)
    page.goto(f"{server.url}/persons/{halved}")
    for face in halved_faces[:3]:
        page.check(f'[data-face-id="{face}"] [data-select-face]')
    page.click("[data-action=move-selected]")
    page.click("#move-dialog button[value=move]")
    said(page, "Moved to a new person.")
    other_half, _ = server.person_of(halved_faces[0])
    assert server.faces_of(other_half) == halved_faces[:3]
    page.goto(server.url + "/")
    order = [
        int(id_)
        for id_ in page.locator(".card[data-person-id]").evaluate_all(
            "cards => cards.map((card) => card.dataset.personId)"
        )
    ]
    keeper, merged_away = sorted((halved, other_half), key=order.index)  # the first in the grid stays
    page.check(f'.card[data-person-id="{halved}"] [data-select-person]')
    page.check(f'.card[data-person-id="{other_half}"] [data-select-person]')
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("[data-action=merge-selected]")
    expect(page.locator(f'.card[data-person-id="{merged_away}"]')).to_have_count(0)
    assert server.faces_of(keeper) == halved_faces
    assert merged_away not in server.persons()

    # Forget: the confirmation step first (cancelled: nothing happens), then for good.
    page.goto(f"{server.url}/persons/{forgotten}")
    page.click("[data-action=forget]")
    page.click("#forget-dialog button[value=cancel]")
    assert forgotten in server.persons()
    page.click("[data-action=forget]")
    page.click("#forget-dialog button[value=forget]")
    expect(page).to_have_url(server.url + "/")
    assert forgotten not in server.persons()

    # The photo of the moved face: every face boxed, the moved one named after its new person.
    image_id = server.rows(select(faces.c.image_id).where(faces.c.id == moved))[0][0]
    page.goto(f"{server.url}/photos/{image_id}?face={moved}")
    expect(page.locator(f'.box[data-face-id="{moved}"]')).to_have_attribute("href", f"/persons/{receiver}")
    assert page.locator(".frame img").evaluate("img => img.complete && img.naturalWidth > 0")

    # The grid, named first; every cover decoded.
    page.goto(server.url + "/")
    page.wait_for_load_state("networkidle")
    assert page.locator(".card .name").first.inner_text() == "Alice Example"
    covers = page.locator(".card img")
    assert covers.count() >= 4
    assert covers.evaluate_all("images => images.every(img => img.complete && img.naturalWidth > 0)")

    # A recluster keeps every edit.
    command(server.root, "recluster", "--db", server.database)
    after = server.persons()
    assert after[alice][0] == "Alice Example"
    assert server.person_of(moved) == (receiver, "manual")
    assert server.person_of(rejected) == (None, "manual")
    assert server.person_of(split) == (alice, "manual")
    assert set(halved_faces) <= set(server.faces_of(keeper))
    assert merged_away not in after
    assert forgotten not in after
    assert newcomer not in after


def test_signing_in_and_answering_is_this_x(page: Any, tmp_path: Path) -> None:
    """With API_TOKEN: the pages ask for it once, then load (thumbnails too, through the cookie); on the
    unassigned faces "Is this Bob?" is answered Yes, and a stranger's face starts a new person."""
    from playwright.sync_api import expect

    database = f"sqlite:///{tmp_path / 'web.sqlite3'}"
    settings = web_settings(database, tmp_path, api_token="let-me-in")
    with ThreadPoolExecutor(1) as thread:  # its own event loop: Playwright's runs in this thread
        library = thread.submit(build_library, settings, tmp_path).result()
    server = Server("", tmp_path, database)
    with serving(library.settings) as url:
        page.goto(url + "/")
        expect(page).to_have_url(url + "/sign-in")
        page.fill("#token", "not it")
        page.click("button[type=submit]")
        expect(page.locator(".error")).to_have_text("That token is not the server's.")
        page.fill("#token", "let-me-in")
        page.click("button[type=submit]")
        expect(page).to_have_url(url + "/")
        page.wait_for_load_state("networkidle")
        covers = page.locator(".card img")
        assert covers.count() == 4
        assert covers.evaluate_all("images => images.every(img => img.complete && img.naturalWidth > 0)")

        page.click("text=Unassigned faces")
        question = page.locator(f'.face[data-face-id="{library.like_bob}"] .question')
        expect(question).to_have_text("Is this Bob?")
        page.click(f'[data-action=accept-face][data-face-id="{library.like_bob}"]')
        said(page, "Face added to the person.")
        assert server.person_of(library.like_bob) == (library.bob, "manual")
        page.click(f'[data-action=new-person][data-face-id="{library.stranger}"]')
        said(page, "New person made.")
        stranger_person, _ = server.person_of(library.stranger)
        assert stranger_person not in (None, library.ada, library.bob, library.cy, library.ada_too)

        # The photo: every face boxed, each named after its person.
        page.goto(f"{url}/photos/{library.photos[3]}")
        boxes = page.locator(".box span")
        expect(boxes).to_have_text([f"Unnamed #{library.ada_too}", "Bob"], use_inner_text=True)
        assert page.locator(".frame img").evaluate("img => img.complete && img.naturalWidth > 0")

        # Hide a person: it leaves the grid, and comes back with "Show hidden persons".
        page.goto(f"{url}/persons/{library.cy}")
        page.click("[data-action=hide]")
        expect(page.locator("[data-action=hide]")).to_have_text("Show in People")
        assert server.rows(select(persons.c.hidden).where(persons.c.id == library.cy)) == [(True,)]
        page.goto(url + "/")
        expect(page.locator(f'.card[data-person-id="{library.cy}"]')).to_have_count(0)
        page.click("text=Show hidden persons")
        expect(page.locator(f'.card[data-person-id="{library.cy}"]')).to_contain_text("hidden")

        # On Ada's page: a new cover; a face moved to Bob by typing his name; the rest "not Ada" at once.
        ada_faces = sorted(server.faces_of(library.ada))
        page.goto(f"{url}/persons/{library.ada}")
        page.click(f'[data-action=cover][data-face-id="{ada_faces[1]}"]')
        expect(page.locator(f'.face[data-face-id="{ada_faces[1]}"] .meta')).to_contain_text("Cover")
        assert server.rows(select(persons.c.cover_face_id).where(persons.c.id == library.ada)) == [
            (ada_faces[1],)
        ]
        page.check(f'[data-face-id="{ada_faces[0]}"] [data-select-face]')
        page.click("[data-action=move-selected]")
        page.fill("#move-target", "bob")
        page.click("#move-dialog button[value=move]")
        said(page, "Moved.")
        assert server.person_of(ada_faces[0]) == (library.bob, "manual")
        for face in ada_faces[2:]:
            page.check(f'[data-face-id="{face}"] [data-select-face]')
        page.click("[data-action=reject-selected]")
        said(page, "Faces removed from this person.")
        assert [server.person_of(face) for face in ada_faces[2:]] == [(None, "manual")] * len(ada_faces[2:])
        assert server.faces_of(library.ada) == [ada_faces[1]]


def screenshot_folder(tmp_path: Path) -> Path:
    """docs/ when UPDATE_SCREENSHOTS=1 asks to refresh the README's screenshots, else the test's folder."""
    return README_SCREENSHOTS if os.environ.get("UPDATE_SCREENSHOTS") == "1" else tmp_path / "screenshots"


def test_screenshots_for_the_readme(
    eval_dir: Path, page: Any, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    """The persons grid and a person's page after a scan of the group photos, one person named."""
    from playwright.sync_api import expect

    folder = screenshot_folder(tmp_path)
    root = tmp_path_factory.mktemp("web-screenshots")
    with scanned(root, eval_dir / SCREENSHOT_PHOTOS) as server:
        counts = server.persons()
        largest = max(counts, key=lambda person: (counts[person][1], -person))
        page.goto(f"{server.url}/persons/{largest}")
        page.fill("#name", "Sam Example")
        page.click("text=Save name")
        said(page, "Name saved.")
        page.reload()
        page.wait_for_load_state("networkidle")
        faces = page.locator(".face img")
        expect(faces).to_have_count(counts[largest][1])
        assert faces.evaluate_all("images => images.every(img => img.complete && img.naturalWidth > 0)")
        folder.mkdir(exist_ok=True)
        page.screenshot(path=folder / "web-person.png")
        page.goto(server.url + "/")
        page.wait_for_load_state("networkidle")
        cards = page.locator(".card[data-person-id]")
        expect(cards).to_have_count(len(counts))
        assert page.locator(".card .name").first.inner_text() == "Sam Example"
        covers = page.locator(".card img")
        assert covers.evaluate_all("images => images.every(img => img.complete && img.naturalWidth > 0)")
        page.screenshot(path=folder / "web-persons.png")
    for name in ("web-person.png", "web-persons.png"):
        written = (folder / name).read_bytes()
        assert written.startswith(b"\x89PNG")
        assert len(written) > 20_000, f"{name}: {len(written)} bytes, an empty page?"
