"""The persons gallery, rendered by a real headless Chromium from a database built with the real data layer.

The thumbnails are real faces cut with PIL around the nose points annotated in eval/groups; the embeddings
are placeholders, because the gallery never reads them.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
from PIL import Image, ImageStat

from image_grouping.bootstrap import bootstrap
from image_grouping.config import Settings
from image_grouping.models.faces import DetectedFace, FaceQuality, ImageAnalysis
from image_grouping.report import write_gallery
from image_grouping.storage import (
    SqlUnitOfWork,
    ThumbnailStore,
    create_engine,
    ensure_schema,
    read_database_id,
)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
PHOTOS = ["compreface__000_5.jpg", "compreface__016_8.jpg"]  # 5 + 8 annotated faces
FACE_EDGE = 120  # pixels cut around each nose point

# Counts, once the page has loaded, the thumbnails the browser really decoded; read back from --dump-dom.
LOADED_PROBE = """<script>
window.addEventListener("load", () => {
  const images = [...document.images];
  document.body.dataset.imagesTotal = images.length;
  document.body.dataset.imagesLoaded = images.filter((img) => img.complete && img.naturalWidth > 0).length;
});
</script>
"""


def nose_points(eval_dir: Path, photo: str) -> list[tuple[int, int]]:
    with (eval_dir / "groups" / "groups_annotations.csv").open(newline="") as file:
        row = next(row for row in csv.DictReader(file) if row["file"] == photo)
    return [(int(x), int(y)) for x, y in re.findall(r"\((\d+),(\d+)\)", row["annotation_per_source"])]


def face_from_photo(photo: Image.Image, nose: tuple[int, int]) -> DetectedFace:
    x, y = nose
    half = FACE_EDGE // 2
    box = (max(x - half, 0), max(y - half, 0), min(x + half, photo.width), min(y + half, photo.height))
    jpeg = io.BytesIO()
    photo.crop(box).resize((96, 96)).save(jpeg, "JPEG", quality=85)
    embedding = np.ones(512, np.float32) / np.sqrt(512)
    landmarks = np.tile(np.array(nose, np.float32), (5, 1))
    quality = FaceQuality(det_score=0.9, size_px=float(FACE_EDGE), sharpness=100.0, yaw=0.0, pose="frontal")
    return DetectedFace(tuple(float(v) for v in box), landmarks, quality, embedding, jpeg.getvalue())


async def build_database(settings: Settings, eval_dir: Path) -> dict[str, list[int]]:
    """Two photos' faces stored as the service would, then grouped by hand: a named person, an unnamed
    one, a hidden one and a few unassigned faces. Returns the face ids of each group."""
    engine = create_engine(settings)
    await ensure_schema(engine)
    database_id = await read_database_id(engine)
    thumbnails = ThumbnailStore(settings.thumbnail_save_path, settings.system_storage, database_id)
    face_ids: list[int] = []
    try:
        async with SqlUnitOfWork(engine) as uow:
            for name in PHOTOS:
                path = eval_dir / "groups" / name
                photo = Image.open(path).convert("RGB")
                faces = [face_from_photo(photo, nose) for nose in nose_points(eval_dir, name)]
                image = await uow.images.get_or_create(None, str(path))
                paths = [thumbnails.save(name, i, face.thumbnail_jpeg) for i, face in enumerate(faces)]
                analysis = ImageAnalysis(photo.width, photo.height, "buffalo_sc", faces)
                content = path.read_bytes()
                face_ids += await uow.save_analysis(
                    image.id, hashlib.sha256(content).hexdigest(), len(content), analysis, paths
                )
            groups = {"named": face_ids[:6], "unnamed": face_ids[6:9], "hidden": face_ids[9:11]}
            groups["unassigned"] = face_ids[11:]
            for group in ("named", "unnamed", "hidden"):
                person_id = await uow.persons.create(cover_face_id=groups[group][1])
                await uow.faces.set_persons({face_id: person_id for face_id in groups[group]})
                groups[f"{group}_person"] = [person_id]
            await uow.persons.rename(groups["named_person"][0], "Ada <Lovelace>")
            await uow.persons.set_hidden(groups["hidden_person"][0], True)
            await uow.commit()
    finally:
        await engine.dispose()
    return groups


def chromium(page: Path, profile: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    command = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--window-size=1280,1000",
        "--virtual-time-budget=10000",
        *arguments,
        page.as_uri(),
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    storage = tmp_path / "storage"
    return Settings(
        system_storage=storage,
        thumbnail_save_path=storage / "thumbnails",
        database_url=f"sqlite:///{storage / 'gallery.sqlite3'}",
    )


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (scripts/install-system-packages)")
async def test_gallery_shows_persons_with_loaded_thumbnails(
    settings: Settings, eval_dir: Path, tmp_path: Path
) -> None:
    groups = await build_database(settings, eval_dir)

    # Written away from the storage, so every thumbnail link has to climb out of the gallery's folder.
    async with bootstrap(settings) as adapters:
        page = await write_gallery(
            adapters.unit_of_work, settings.system_storage, tmp_path / "elsewhere" / "gallery"
        )
    assert page == (tmp_path / "elsewhere" / "gallery" / "index.html")

    probed = page.with_name("probed.html")
    probed.write_text(page.read_text().replace("</body>", LOADED_PROBE + "</body>"))
    dom = chromium(probed, tmp_path / "profile", "--dump-dom").stdout
    screenshot = tmp_path / "gallery.png"
    chromium(page, tmp_path / "profile", f"--screenshot={screenshot}")

    # Persons: the named one (escaped), the unnamed one as "Person N", the hidden one left out.
    assert "Ada &lt;Lovelace&gt;" in dom
    assert f"Person {groups['unnamed_person'][0]}" in dom
    assert f'data-person-id="{groups["hidden_person"][0]}"' not in dom
    assert re.search(r">\s*6 faces\s*<", dom)
    assert re.search(r">\s*3 faces\s*<", dom)
    assert "1 hidden person not shown" in dom
    # Most faces first; the cover is the face chosen as cover (the named person's second face).
    assert dom.index("Ada &lt;Lovelace&gt;") < dom.index(f"Person {groups['unnamed_person'][0]}")
    assert re.search(r'class="cover" src="[^"]*/compreface__000_5\.jpg_1\.jpg"', dom)
    # Every thumbnail shown was found and decoded: 2 persons x (cover + strip) + the unassigned faces.
    expected_images = (1 + 6) + (1 + 3) + len(groups["unassigned"])
    total = int(re.search(r'data-images-total="(\d+)"', dom).group(1))
    loaded = int(re.search(r'data-images-loaded="(\d+)"', dom).group(1))
    assert (total, loaded) == (expected_images, expected_images)
    assert f"Unassigned faces ({len(groups['unassigned'])})" in dom

    # The screenshot is a page with content: many colours (the photos), not a blank or error page.
    with Image.open(screenshot) as shot:
        rgb = shot.convert("RGB")
        assert rgb.size == (1280, 1000)
        assert len(rgb.getcolors(maxcolors=1 << 20) or []) > 1000
        assert max(ImageStat.Stat(rgb).stddev) > 20


def test_report_command_prints_the_gallery_path(settings: Settings, eval_dir: Path, tmp_path: Path) -> None:
    asyncio.run(build_database(settings, eval_dir))  # sync test: the database is built in its own loop
    out = tmp_path / "report"
    environment = os.environ | {
        "SYSTEM_STORAGE": str(settings.system_storage),
        "DATABASE_URL": settings.database_url.get_secret_value(),
        "LOG_ROOT": str(tmp_path / "logs"),
    }

    result = subprocess.run(
        [Path(sys.executable).with_name("image-grouping"), "report", "--out", str(out)],
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(out / "index.html")
    html = (out / "index.html").read_text()
    # Links are relative (the folder can be opened anywhere) and each one points at a real file.
    links = re.findall(r'<img[^>]* src="([^"]+)"', html)
    assert len(links) == (1 + 6) + (1 + 3) + 2
    assert all(not link.startswith(("/", "file:", "http")) for link in links)
    assert all((out / unquote(link)).is_file() for link in links)
