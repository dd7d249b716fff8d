"""Stored image paths map into the images root and nowhere else; thumbnails are written atomically."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from storage_factories import BOXES, make_analysis

from image_grouping.errors import ImageNotFoundError, ImagePathError, ImageUnreadableError
from image_grouping.storage import ImagePathResolver, ThumbnailStore, read_image_file

DB = "3f2a9c0e8b7d4e6f9a1b2c3d4e5f6a7b"
OTHER_DB = "0c1d2e3f4a5b6c7d8e9f0a1b2c3d4e5f"
PREFIX = "//server_ip/files/location"


@pytest.fixture
def images_root(tmp_path: Path) -> Path:
    root = tmp_path / "images"
    (root / "2024" / "trip").mkdir(parents=True)
    (root / "2024" / "trip" / "a.jpg").write_bytes(b"jpeg")
    (tmp_path / "secret.txt").write_text("outside")
    (root / "2024" / "link-out.jpg").symlink_to(tmp_path / "secret.txt")
    (root / "2024" / "link-in.jpg").symlink_to(root / "2024" / "trip" / "a.jpg")
    return root


@pytest.mark.parametrize(
    "stored",
    [
        "//server_ip/files/location/2024/trip/a.jpg",
        "\\\\server_ip\\files\\location\\2024\\trip\\a.jpg",
        "//SERVER_IP/Files/location/2024/trip/a.jpg",
        "//server_ip/files/location/2024/x/../trip/a.jpg",
        "2024/trip/a.jpg",
        "//server_ip/files/location/2024/link-in.jpg",
    ],
)
def test_paths_under_the_prefix_resolve_into_the_images_root(images_root: Path, stored: str) -> None:
    resolved = ImagePathResolver(PREFIX, images_root).resolve(stored)
    assert resolved == (images_root / "2024" / "trip" / "a.jpg").resolve()


def test_an_absolute_path_inside_the_root_is_accepted(images_root: Path) -> None:
    inside = str(images_root / "2024" / "trip" / "a.jpg")
    assert ImagePathResolver(PREFIX, images_root).resolve(inside).name == "a.jpg"


@pytest.mark.parametrize(
    "stored",
    [
        "//server_ip/files/location/../secret.txt",
        "//server_ip/files/location/2024/../../secret.txt",
        "\\\\server_ip\\files\\location\\..\\..\\..\\etc\\passwd",
        "../secret.txt",
        "2024/../../secret.txt",
        "/etc/passwd",
        "//other_server/files/location/2024/trip/a.jpg",
        "//server_ip/files/location2/2024/trip/a.jpg",
        "C:\\images\\a.jpg",
        "//server_ip/files/location/2024/link-out.jpg",
        "2024/trip/a.jpg\x00.png",
        "",
    ],
)
def test_paths_leading_outside_the_images_root_are_refused(images_root: Path, stored: str) -> None:
    with pytest.raises(ImagePathError):
        ImagePathResolver(PREFIX, images_root).resolve(stored)


def test_missing_files_and_folders_raise_image_not_found(images_root: Path) -> None:
    resolver = ImagePathResolver(PREFIX + "/", images_root)
    with pytest.raises(ImageNotFoundError):
        resolver.resolve(PREFIX + "/2024/trip/missing.jpg")
    with pytest.raises(ImageNotFoundError):
        resolver.resolve(PREFIX + "/2024/trip")  # a folder
    with pytest.raises(ImageNotFoundError):
        read_image_file(images_root / "2024" / "trip", 1_000_000)


def test_a_file_that_may_not_be_read_is_image_unreadable(
    images_root: Path, deny_reading: Callable[[Path], None]
) -> None:
    denied = images_root / "2024" / "trip" / "a.jpg"
    deny_reading(denied)

    with pytest.raises(ImageUnreadableError) as refused:
        ImagePathResolver(PREFIX, images_root).resolve(PREFIX + "/2024/trip/a.jpg")
    assert refused.value.reason == "image_unreadable"  # the dead-letter reason
    with pytest.raises(ImageUnreadableError, match="Permission denied"):
        read_image_file(denied, 1_000_000)


def test_thumbnails_are_saved_under_system_storage_with_a_relative_path(tmp_path: Path) -> None:
    store = ThumbnailStore(tmp_path / "data" / "thumbnails", tmp_path / "data", DB)

    first = store.save("42", 0, b"first")
    second = store.save("42", 0, b"second")  # a re-run overwrites in place
    odd = store.save("../../etc/x", 3, b"odd")

    assert first == second == f"thumbnails/{DB}/42/42_0.jpg"
    assert store.path_of(first).read_bytes() == b"second"
    assert (tmp_path / "data" / odd).resolve().is_relative_to(tmp_path / "data" / "thumbnails" / DB)
    assert not list((tmp_path / "data" / "thumbnails").rglob(".tmp-*"))  # no temporary files left


def test_a_thumbnail_is_readable_by_all_and_replaced_whole(tmp_path: Path) -> None:
    """New files are written in place, files of faces analysed again replaced by a rename: a reader of
    the old file (a web server sending it) reads it whole."""
    store = ThumbnailStore(tmp_path / "data" / "thumbnails", tmp_path / "data", DB)
    umask = os.umask(0o077)
    try:
        path = store.path_of(store.save("42", 0, b"old thumbnail"))
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
        with path.open("rb") as reader:
            store.save("42", 0, b"new")
            assert reader.read() == b"old thumbnail"
    finally:
        os.umask(umask)

    assert path.read_bytes() == b"new"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_thumbnails_outside_system_storage_get_an_absolute_path(tmp_path: Path) -> None:
    saved = ThumbnailStore(tmp_path / "thumbs", tmp_path / "data", DB).save("7", 1, b"x")
    assert Path(saved).is_absolute()
    assert Path(saved).read_bytes() == b"x"


def test_all_faces_of_an_image_are_saved_in_face_order(tmp_path: Path) -> None:
    store = ThumbnailStore(tmp_path / "data" / "thumbnails", tmp_path / "data", DB)
    analysis = make_analysis(BOXES)
    faces = [
        replace(face, thumbnail_jpeg=f"face {index}".encode()) for index, face in enumerate(analysis.faces)
    ]
    analysis = replace(analysis, faces=faces)

    paths = store.save_faces(42, analysis)

    assert paths == [f"thumbnails/{DB}/42/42_{analysis.model_pack}_{index}.jpg" for index in range(3)]
    for path, face in zip(paths, analysis.faces, strict=True):
        assert store.path_of(path).read_bytes() == face.thumbnail_jpeg
    assert store.save_faces(42, analysis) == paths  # analysing again overwrites the same files


def test_analysing_again_with_fewer_faces_removes_the_thumbnails_of_the_faces_gone(tmp_path: Path) -> None:
    store = ThumbnailStore(tmp_path / "data" / "thumbnails", tmp_path / "data", DB)
    analysis = make_analysis(BOXES)
    first = store.save_faces(42, analysis)
    other_image = store.save_faces(43, analysis)

    again = store.save_faces(42, replace(analysis, faces=analysis.faces[:1]))

    assert again == first[:1]
    assert [store.path_of(path).exists() for path in first] == [True, False, False]
    assert all(store.path_of(path).exists() for path in other_image)


def test_two_databases_never_share_a_thumbnail_file(tmp_path: Path) -> None:
    """Image ids repeat between databases: image 42 of each must keep its own files."""
    analysis = make_analysis(BOXES)
    stores = [
        ThumbnailStore(tmp_path / "data" / "thumbnails", tmp_path / "data", db) for db in (DB, OTHER_DB)
    ]
    faces = [replace(face, thumbnail_jpeg=b"first database") for face in analysis.faces]
    first = stores[0].save_faces(42, replace(analysis, faces=faces))

    second = stores[1].save_faces(42, replace(analysis, faces=analysis.faces[:1]))  # fewer faces there

    assert not set(first) & set(second)
    assert all(stores[0].path_of(path).read_bytes() == b"first database" for path in first)


@pytest.mark.parametrize("database_id", ["", "..", "../x", "a/b"])
def test_a_database_id_that_is_not_a_plain_name_is_refused(tmp_path: Path, database_id: str) -> None:
    with pytest.raises(ValueError, match="not a database id"):
        ThumbnailStore(tmp_path / "thumbnails", tmp_path, database_id)
