"""The web app's HTTP API, on SQLite and PostgreSQL: every endpoint does what the handler behind it does,
and bad input (unknown ids, wrong types, values out of range, a missing token) is a 4xx with a message,
never a 500. Files are served by id, only from inside the thumbnail folder and the images root."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy import select, update
from typer.testing import CliRunner
from web_library import Library

from image_grouping.cli import app as cli
from image_grouping.storage.database import async_url, engine_for_url
from image_grouping.storage.schema import cannot_links, faces, persons
from image_grouping.web import create_app

MISSING = 999_999


def rows(library: Library, query: Any) -> list[Any]:
    async def read() -> list[Any]:
        engine = engine_for_url(async_url(library.settings.database_url.get_secret_value()))
        try:
            async with engine.begin() as connection:
                result = await connection.execute(query)
                return list(result.all()) if result.returns_rows else []
        finally:
            await engine.dispose()

    return asyncio.run(read())


def refused(response: Any, status: int, reason: str | None = None, says: str | None = None) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["detail"]
    if reason is not None:
        assert body["reason"] == reason
    if says is not None:
        assert says in body["detail"]


def types(response: Any) -> list[str]:
    assert response.status_code == 200, response.text
    return [change["type"] for change in response.json()["changes"]]


# --- reads -----------------------------------------------------------------------------------------------


def test_persons_list_named_first_then_by_size_with_covers(client: TestClient, library: Library) -> None:
    page = client.get("/api/persons").json()
    assert page["total"] == 4
    assert [person["id"] for person in page["persons"]] == [
        library.ada,
        library.bob,
        library.cy,
        library.ada_too,
    ]
    ada = page["persons"][0]
    assert ada | {"cover_thumbnail_url": None} == {
        "id": library.ada,
        "name": "Ada",
        "hidden": False,
        "face_count": 3,
        "cover_face_id": library.faces[0][0],
        "cover_thumbnail_url": None,
        "url": f"/api/persons/{library.ada}",
        "page_url": f"/persons/{library.ada}",
    }
    cover = client.get(ada["cover_thumbnail_url"])
    assert cover.status_code == 200
    assert cover.headers["content-type"] == "image/jpeg"
    assert cover.content[:2] == b"\xff\xd8"

    second = client.get("/api/persons", params={"offset": 1, "limit": 2}).json()
    assert [person["id"] for person in second["persons"]] == [library.bob, library.cy]
    assert (second["total"], second["offset"], second["limit"]) == (4, 1, 2)


@pytest.mark.parametrize(
    "params", [{"limit": 0}, {"limit": 1001}, {"limit": "many"}, {"offset": -1}, {"hidden": "perhaps"}]
)
def test_persons_list_refuses_bad_paging(client: TestClient, params: dict[str, Any]) -> None:
    response = client.get("/api/persons", params=params)
    assert response.status_code == 422
    assert response.json()["detail"]


def test_person_with_a_page_of_faces(client: TestClient, library: Library) -> None:
    person = client.get(f"/api/persons/{library.ada}", params={"limit": 2}).json()
    assert (person["name"], person["face_count"], person["limit"]) == ("Ada", 3, 2)
    assert len(person["faces"]) == 2
    face = person["faces"][0]
    assert face["person_id"] == library.ada
    assert face["photo_url"] == f"/api/images/{face['image_id']}/file"
    assert face["photo_page_url"] == f"/photos/{face['image_id']}"
    assert face["added_by_hand"] is False
    assert client.get(face["thumbnail_url"]).status_code == 200
    rest = client.get(f"/api/persons/{library.ada}", params={"offset": 2}).json()["faces"]
    assert len(rest) == 1
    assert rest[0]["id"] not in {each["id"] for each in person["faces"]}


@pytest.mark.parametrize(
    ("path", "status"),
    [
        (f"/api/persons/{MISSING}", 404),
        ("/api/persons/abc", 422),
        ("/api/persons/0", 422),
        (f"/api/persons/{2**63}", 422),
        ("/api/persons/1?limit=0", 422),
    ],
)
def test_person_refuses_unknown_and_malformed_ids(client: TestClient, path: str, status: int) -> None:
    response = client.get(path)
    assert response.status_code == status, response.text
    if status == 404:
        refused(response, 404, "unknown_person", f"no person with id {MISSING}")


def test_the_largest_ids_and_offsets_are_no_error(client: TestClient) -> None:
    """64-bit ids and offsets reach the database as they are (a larger one is refused by validation)."""
    largest = 2**63 - 1
    refused(client.get(f"/api/persons/{largest}"), 404, "unknown_person")
    refused(client.get(f"/api/faces/{largest}/thumbnail"), 404, "unknown_face")
    refused(client.post(f"/api/faces/{largest}/assign", json={"person_id": largest}), 404)
    assert client.get("/api/persons", params={"offset": largest}).json()["persons"] == []
    assert client.get("/api/faces/unassigned", params={"offset": largest}).json() == []
    assert client.get("/", params={"page": 10**9}).status_code == 200


def test_unassigned_faces_with_their_probable_person(client: TestClient, library: Library) -> None:
    unassigned = {face["id"]: face for face in client.get("/api/faces/unassigned").json()}
    assert set(unassigned) == {library.like_bob, library.stranger}
    assert unassigned[library.like_bob]["suggestion"]["person_id"] == library.bob
    assert unassigned[library.like_bob]["suggestion"]["name"] == "Bob"
    assert unassigned[library.stranger]["suggestion"] is None
    assert client.get("/api/faces/unassigned", params={"limit": 1}).json()[0]["id"] in unassigned
    assert client.get("/api/faces/unassigned", params={"offset": -1}).status_code == 422


def test_merge_suggestions(client: TestClient, library: Library) -> None:
    pairs = client.get("/api/suggestions/merges").json()
    assert [(pair["person_a"], pair["person_b"]) for pair in pairs] == [
        tuple(sorted((library.ada, library.ada_too)))
    ]
    assert pairs[0]["similarity"] > 0.4
    assert client.get("/api/suggestions/merges", params={"limit": "x"}).status_code == 422


def test_photo_with_its_faces_and_its_file(client: TestClient, library: Library) -> None:
    photo = client.get(f"/api/images/{library.photos[0]}").json()
    assert (photo["width"], photo["height"], photo["path"]) == (640, 480, "//nas/photos/0.jpg")
    assert [face["person_id"] for face in photo["faces"]] == [library.ada, library.bob, library.cy]
    assert photo["faces"][0]["box"] == [10.0, 10.0, 110.0, 130.0]
    served = client.get(photo["url"])
    assert served.status_code == 200
    assert served.content == library.photo_files[0].read_bytes()
    assert served.headers["content-type"] == "image/jpeg"
    # A photo stored by a local scan (an absolute path) is served from where it was found.
    local = client.get(f"/api/images/{library.photos[4]}/file")
    assert local.content == library.photo_files[4].read_bytes()
    refused(client.get(f"/api/images/{MISSING}"), 404, "unknown_image")
    refused(client.get(f"/api/images/{MISSING}/file"), 404, "unknown_image")
    assert client.get("/api/images/x/file").status_code == 422


def test_photos_showing_every_one_of_some_persons(client: TestClient, library: Library) -> None:
    def ids(*person_ids: int, **paging: int) -> list[int]:
        answer = client.get("/api/images", params={"with": list(person_ids), **paging})
        assert answer.status_code == 200, answer.text
        return [photo["id"] for photo in answer.json()["images"]]

    assert ids(library.ada, library.bob) == library.photos[:3]
    assert ids(library.ada_too) == [library.photos[3]]
    assert ids(library.ada, library.ada_too) == []
    assert ids(library.ada, library.bob, library.cy, offset=1, limit=1) == [library.photos[1]]
    page = client.get("/api/images", params={"with": library.ada_too}).json()
    assert (page["offset"], page["limit"]) == (0, 100)
    assert page["images"] == [
        {
            "id": library.photos[3],
            "path": "//nas/photos/3.jpg",
            "source_id": "upload-3",
            "width": 640,
            "height": 480,
            "url": f"/api/images/{library.photos[3]}/file",
            "detail_url": f"/api/images/{library.photos[3]}",
            "page_url": f"/photos/{library.photos[3]}",
        }
    ]
    refused(client.get("/api/images", params={"with": [library.ada, MISSING]}), 404, "unknown_person")
    for params in (
        {},
        {"with": "ada"},
        {"with": 0},
        {"with": 2**63},
        {"with": library.ada, "limit": 0},
        {"with": library.ada, "offset": -1},
        {"with": [library.ada] * 1001},
    ):
        assert client.get("/api/images", params=params).status_code == 422, params


def test_delete_a_photo_erases_its_faces_and_their_thumbnails(client: TestClient, library: Library) -> None:
    photo = library.photos[3]  # Ada-too's only face, and a face nobody's
    thumbnails = rows(library, select(faces.c.thumbnail_path).where(faces.c.image_id == photo))
    files = [library.settings.system_storage / path for (path,) in thumbnails]
    assert len(files) == 2
    assert all(file.is_file() for file in files)
    answer = client.delete(f"/api/images/{photo}")
    assert types(answer) == ["faces.deleted", "persons.updated"]
    deleted, updated = (change["data"] for change in answer.json()["changes"])
    assert sorted(deleted["face_ids"]) == sorted(library.faces[3])
    assert deleted["person_ids"] == [library.ada_too]  # left without faces, and unnamed
    assert updated["changes"]["deleted"] == [library.ada_too]
    assert not any(file.exists() for file in files)
    assert rows(library, select(faces.c.id).where(faces.c.image_id == photo)) == []
    assert library.photo_files[3].is_file()  # the uploader's file is the uploader's
    refused(client.get(f"/api/images/{photo}"), 404, "unknown_image")
    refused(client.get(f"/api/persons/{library.ada_too}"), 404, "unknown_person")
    refused(client.delete(f"/api/images/{photo}"), 404, "unknown_image")  # a second time: gone
    # Named persons stay, with the faces of their other photos.
    assert types(client.delete(f"/api/images/{library.photos[0]}"))[0] == "faces.deleted"
    assert client.get(f"/api/persons/{library.cy}").json()["face_count"] == 2
    refused(client.delete(f"/api/images/{MISSING}"), 404, "unknown_image")
    for path in ("/api/images/x", "/api/images/0", f"/api/images/{2**63}"):
        assert client.delete(path).status_code == 422


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        ({"box": [10, 10, 12, 60]}, 422, "not a face's box"),  # narrower than 8 pixels
        ({"box": [60, 60, 10, 10]}, 422, "not a face's box"),  # upside down
        ({"box": [600, 400, 700, 500]}, 422, "not inside the photo"),
        ({"box": [10, 10, 110, 130]}, 422, "has a face there already"),
        ({"box": [200, 200, 260, 270], "person_id": MISSING}, 404, "no person with id"),
        ({"box": [200, 200, 260, 270], "person_id": 0}, 422, None),
        ({"box": [200, 200, 260, 270], "person_id": "bob"}, 422, None),
        ({"box": [200, 200, 260]}, 422, None),
        ({"box": ["a", 200, 260, 270]}, 422, None),
        ({"box": [200, 200, 260, 270], "colour": "red"}, 422, None),
        ({}, 422, None),
    ],
)
def test_add_a_face_refuses_bad_input_before_loading_the_models(
    client: TestClient, library: Library, body: dict[str, Any], status: int, says: str | None
) -> None:
    response = client.post(f"/api/images/{library.photos[0]}/faces", json=body)
    if says is not None:
        refused(response, status, says=says)
    assert response.status_code == status, response.text
    assert client.app.state.adapters._analyzer is None  # type: ignore[attr-defined]
    assert len(client.get(f"/api/images/{library.photos[0]}").json()["faces"]) == 3


def test_add_a_face_to_an_unknown_or_malformed_photo(client: TestClient) -> None:
    box = {"box": [200, 200, 260, 270]}
    refused(client.post(f"/api/images/{MISSING}/faces", json=box), 404, "unknown_image")
    assert client.post("/api/images/x/faces", json=box).status_code == 422
    assert client.post(f"/api/images/{2**63}/faces", json=box).status_code == 422


def test_files_only_from_inside_the_stored_roots(
    client: TestClient, library: Library, tmp_path: Path
) -> None:
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(b"\xff\xd8 not yours")
    # A thumbnail path climbing out of the thumbnail folder, another one through a symlink.
    face = library.faces[0][1]
    rows(library, update(faces).where(faces.c.id == face).values(thumbnail_path="../secret.jpg"))
    refused(client.get(f"/api/faces/{face}/thumbnail"), 403, "path_outside_images_root")
    link = library.settings.thumbnail_save_path / "link.jpg"
    link.symlink_to(secret)
    rows(library, update(faces).where(faces.c.id == face).values(thumbnail_path=str(link)))
    refused(client.get(f"/api/faces/{face}/thumbnail"), 403)
    # An uploader's path that climbs out of the images root.
    library.photo_files[1].unlink()
    (library.settings.container_images_root.parent / "up.jpg").write_bytes(b"\xff\xd8 outside")
    from image_grouping.storage.schema import images

    rows(
        library, update(images).where(images.c.id == library.photos[1]).values(source_path="//nas/../up.jpg")
    )
    refused(client.get(f"/api/images/{library.photos[1]}/file"), 403, "path_outside_images_root")
    # A local path through `..`, and one that is no image.
    rows(
        library,
        update(images)
        .where(images.c.id == library.photos[4])
        .values(source_path=f"{library.photo_files[4].parent}/../secret.jpg"),
    )
    refused(client.get(f"/api/images/{library.photos[4]}/file"), 403)
    rows(library, update(images).where(images.c.id == library.photos[4]).values(source_path="/etc/passwd"))
    refused(client.get(f"/api/images/{library.photos[4]}/file"), 403)
    # A photo whose file is gone; a face whose thumbnail is gone; an unknown face.
    rows(library, update(images).where(images.c.id == library.photos[2]).values(source_path="//nas/gone.jpg"))
    refused(client.get(f"/api/images/{library.photos[2]}/file"), 404, "image_not_found")
    gone = library.faces[2][2]
    thumbnail = rows(library, select(faces.c.thumbnail_path).where(faces.c.id == gone))[0][0]
    (library.settings.system_storage / thumbnail).unlink()
    refused(client.get(f"/api/faces/{gone}/thumbnail"), 404, "image_not_found")
    refused(client.get(f"/api/faces/{MISSING}/thumbnail"), 404, "unknown_face")


# --- edits -----------------------------------------------------------------------------------------------


def test_rename_hide_and_cover(client: TestClient, library: Library) -> None:
    url = f"/api/persons/{library.cy}"
    assert types(client.patch(url, json={"name": "  Cy  "})) == ["persons.updated"]
    assert types(client.patch(url, json={"name": "Cy"})) == []  # nothing changed
    assert types(client.patch(url, json={"hidden": True})) == ["persons.updated"]
    cover = library.faces[2][2]
    assert types(client.patch(url, json={"cover_face_id": cover})) == ["persons.updated"]
    assert rows(
        library,
        select(persons.c.name, persons.c.hidden, persons.c.cover_face_id).where(persons.c.id == library.cy),
    ) == [("Cy", True, cover)]
    visible = client.get("/api/persons", params={"hidden": False}).json()
    assert library.cy not in [person["id"] for person in visible["persons"]]
    assert types(client.patch(url, json={"name": None, "hidden": False})) == ["persons.updated"] * 2
    assert rows(library, select(persons.c.name, persons.c.hidden).where(persons.c.id == library.cy)) == [
        (None, False)
    ]


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        ({"name": "   "}, 422, "blank"),
        ({}, 422, "give a name"),
        ({"hidden": None}, 422, "hidden cannot be null"),
        ({"hidden": "perhaps"}, 422, None),
        ({"name": 12}, 422, None),
        ({"name": "x" * 256}, 422, None),
        ({"colour": "red"}, 422, None),
        ({"cover_face_id": "one"}, 422, None),
        ({"cover_face_id": MISSING}, 404, "no face"),
    ],
)
def test_edit_person_refuses_bad_input(
    client: TestClient, library: Library, body: dict[str, Any], status: int, says: str | None
) -> None:
    response = client.patch(f"/api/persons/{library.cy}", json=body)
    assert response.status_code == status, response.text
    if says is not None:
        assert says in response.json()["detail"]


def test_edit_refusals_from_the_handlers(client: TestClient, library: Library) -> None:
    refused(client.patch(f"/api/persons/{MISSING}", json={"name": "X"}), 404, "unknown_person")
    not_hers = library.faces[0][1]
    refused(
        client.patch(f"/api/persons/{library.ada}", json={"cover_face_id": not_hers}),
        422,
        "invalid_command",
        "is not one of person",
    )
    assert (
        client.patch(
            f"/api/persons/{library.ada}", content=b"{not json", headers={"content-type": "application/json"}
        ).status_code
        == 422
    )


def test_merge(client: TestClient, library: Library) -> None:
    url = f"/api/persons/{library.ada}/merge"
    assert types(client.post(url, json={"source_ids": [library.ada_too]})) == ["persons.updated"]
    assert rows(
        library, select(faces.c.person_id, faces.c.assigned_by).where(faces.c.id == library.faces[3][0])
    ) == [(library.ada, "manual")]
    assert client.get(f"/api/persons/{library.ada_too}").status_code == 404
    assert types(client.post(url, json={"source_ids": [library.ada_too]})) == []  # done already
    refused(client.post(url, json={"source_ids": [library.ada]}), 422, "invalid_command", "into itself")
    refused(client.post(url, json={"source_ids": [MISSING]}), 404, "unknown_person")
    refused(client.post(f"/api/persons/{MISSING}/merge", json={"source_ids": [library.bob]}), 404)
    for body in ({"source_ids": []}, {"source_ids": "all"}, {"source_ids": [0]}, {}, None):
        assert client.post(url, json=body).status_code == 422


def test_assign_a_face(client: TestClient, library: Library) -> None:
    face = library.like_bob
    answer = client.post(f"/api/faces/{face}/assign", json={"person_id": library.bob})
    assert types(answer) == ["persons.updated"]
    assert answer.json()["changes"][0]["data"]["changes"]["faces"] == [
        {"face_id": face, "before": None, "after": library.bob, "by": "hand"}
    ]
    assert rows(library, select(faces.c.person_id, faces.c.assigned_by).where(faces.c.id == face)) == [
        (library.bob, "manual")
    ]
    created = client.post(f"/api/faces/{library.stranger}/assign", json={"person_id": None}).json()
    new_person = created["changes"][0]["data"]["changes"]["created"][0]
    assert client.get(f"/api/persons/{new_person}").json()["face_count"] == 1
    refused(client.post(f"/api/faces/{MISSING}/assign", json={"person_id": library.bob}), 404, "unknown_face")
    refused(client.post(f"/api/faces/{face}/assign", json={"person_id": MISSING}), 404, "unknown_person")
    for body in ({}, {"person_id": "bob"}, {"person_id": -1}, None):
        assert client.post(f"/api/faces/{face}/assign", json=body).status_code == 422


def test_reject_a_face(client: TestClient, library: Library) -> None:
    face = library.faces[1][0]
    assert types(client.post(f"/api/faces/{face}/reject")) == ["persons.updated"]  # from its own person
    assert rows(library, select(faces.c.person_id).where(faces.c.id == face)) == [(None,)]
    assert rows(library, select(cannot_links.c.person_id).where(cannot_links.c.face_id == face)) == [
        (library.ada,)
    ]
    # "Is this Bob?" - "No": a refusal recorded, and the suggestion gone.
    declined = client.post(f"/api/faces/{library.like_bob}/reject", json={"person_id": library.bob})
    assert types(declined) == ["persons.updated"]
    suggestions = {f["id"]: f["suggestion"] for f in client.get("/api/faces/unassigned").json()}
    assert suggestions[library.like_bob] is None
    refused(client.post(f"/api/faces/{library.stranger}/reject"), 422, "invalid_command", "has no person")
    refused(client.post(f"/api/faces/{MISSING}/reject"), 404, "unknown_face")
    refused(client.post(f"/api/faces/{face}/reject", json={"person_id": MISSING}), 404, "unknown_person")
    assert client.post(f"/api/faces/{face}/reject", json={"person_id": "x"}).status_code == 422


def test_forget_erases_the_person_and_its_thumbnails(client: TestClient, library: Library) -> None:
    thumbnails = rows(library, select(faces.c.thumbnail_path).where(faces.c.person_id == library.cy))
    files = [library.settings.system_storage / path for (path,) in thumbnails]
    assert all(file.is_file() for file in files)
    answer = client.delete(f"/api/persons/{library.cy}")
    assert types(answer) == ["persons.updated", "person.forgotten"]
    assert sorted(answer.json()["changes"][1]["data"]["face_ids"]) == sorted(f[2] for f in library.faces[:3])
    assert not any(file.exists() for file in files)
    assert rows(library, select(faces.c.id).where(faces.c.person_id == library.cy)) == []
    refused(client.get(f"/api/persons/{library.cy}"), 404)
    refused(client.get(f"/api/faces/{library.faces[0][2]}/thumbnail"), 404, "unknown_face")
    assert types(client.delete(f"/api/persons/{library.cy}")) == []  # a second time: done already
    refused(client.delete(f"/api/persons/{MISSING}"), 404, "unknown_person")
    assert client.delete("/api/persons/none").status_code == 422


# --- pages, docs, tokens ---------------------------------------------------------------------------------


def test_pages_render(client: TestClient, library: Library) -> None:
    grid = client.get("/")
    assert grid.status_code == 200
    assert grid.text.index("Ada") < grid.text.index("Bob") < grid.text.index("Unnamed")
    assert f'href="/persons/{library.cy}"' in grid.text
    person = client.get(f"/persons/{library.ada}").text
    assert person.count('data-face-id="') >= 3
    photo = client.get(f"/photos/{library.photos[0]}").text
    assert photo.count('class="box') == 3
    assert "Bob" in photo
    assert "Is this <a" in client.get("/unassigned").text
    assert 'data-action="accept-merge"' in client.get("/suggestions").text
    missing = client.get(f"/persons/{MISSING}")
    assert missing.status_code == 404
    assert "no person with id" in missing.text
    assert client.get("/persons/abc").status_code == 422
    assert client.get("/static/people.js").status_code == 200


def test_openapi_lists_every_endpoint(client: TestClient) -> None:
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert set(paths) >= {
        "/api/persons",
        "/api/persons/{person_id}",
        "/api/persons/{person_id}/merge",
        "/api/faces/{face_id}/assign",
        "/api/faces/{face_id}/reject",
        "/api/faces/unassigned",
        "/api/faces/{face_id}/thumbnail",
        "/api/suggestions/merges",
        "/api/images",
        "/api/images/{image_id}",
        "/api/images/{image_id}/faces",
        "/api/images/{image_id}/file",
    }
    assert set(paths["/api/persons/{person_id}"]) == {"get", "patch", "delete"}
    assert set(paths["/api/images/{image_id}"]) == {"get", "delete"}


def test_a_token_guards_every_request(library: Library) -> None:
    settings = library.settings.model_copy(update={"api_token": SecretStr("s3cret")})
    urls = [
        "/api/persons",
        f"/api/persons/{library.ada}",
        f"/api/faces/{library.faces[0][0]}/thumbnail",
        f"/api/images/{library.photos[0]}/file",
        "/api/faces/unassigned",
        "/api/suggestions/merges",
        f"/api/images?with={library.ada}",
        f"/api/images/{library.photos[0]}",
    ]
    with TestClient(create_app(settings)) as client:
        for url in urls:
            refused(client.get(url), 401, "unauthorized")
            refused(client.get(url, headers={"Authorization": "Bearer wrong"}), 401)
            assert client.get(url, headers={"Authorization": "Bearer s3cret"}).status_code == 200, url
        refused(client.patch(f"/api/persons/{library.bob}", json={"name": "Mallory"}), 401)
        refused(client.delete(f"/api/persons/{library.bob}"), 401)
        assert rows(library, select(persons.c.name).where(persons.c.id == library.bob)) == [("Bob",)]
        refused(client.delete(f"/api/images/{library.photos[0]}"), 401)
        refused(client.delete(f"/api/images/{library.photos[0]}", headers={"Authorization": "Bearer x"}), 401)
        refused(
            client.post(f"/api/images/{library.photos[0]}/faces", json={"box": [200, 200, 260, 270]}), 401
        )
        assert len(rows(library, select(faces.c.id).where(faces.c.image_id == library.photos[0]))) == 3
        # The pages send the browser to sign in; a wrong token signs nobody in; the right one does.
        page = client.get("/", follow_redirects=False)
        assert (page.status_code, page.headers["location"]) == (303, "/sign-in")
        client.post("/sign-in", data={"token": "wrong"}, follow_redirects=False)
        assert client.get("/api/persons").status_code == 401
        signed = client.post("/sign-in", data={"token": "s3cret"}, follow_redirects=False)
        assert "httponly" in signed.headers["set-cookie"].lower()
        assert "samesite=strict" in signed.headers["set-cookie"].lower()
        assert client.get("/").status_code == 200
        assert client.get(f"/api/faces/{library.faces[0][0]}/thumbnail").status_code == 200


def test_serve_refuses_to_listen_beyond_localhost_without_a_token(tmp_path: Path) -> None:
    environment = {"SYSTEM_STORAGE": str(tmp_path / "data"), "LOG_ROOT": str(tmp_path / "logs")}
    result = CliRunner().invoke(
        cli,
        ["serve", "--host", "0.0.0.0", "--db", f"sqlite:///{tmp_path}/x.sqlite3"],
        env=environment | {"API_TOKEN": None},
    )
    assert result.exit_code == 2
    assert "API_TOKEN" in result.stderr
    assert not (tmp_path / "x.sqlite3").exists()
    assert "--library" in CliRunner().invoke(cli, ["serve", "--help"]).stdout


def test_edits_from_another_sites_page_are_refused(client: TestClient, library: Library) -> None:
    """A page elsewhere can make the browser post a form or a bodyless request to the app (CSRF)."""
    url = f"/api/faces/{library.faces[0][0]}/reject"
    for headers in ({"Origin": "http://evil.example"}, {"Sec-Fetch-Site": "cross-site"}):
        refused(client.post(url, headers=headers), 403, "cross_site")
        refused(client.delete(f"/api/persons/{library.bob}", headers=headers), 403, "cross_site")
        refused(client.delete(f"/api/images/{library.photos[0]}", headers=headers), 403, "cross_site")
    assert rows(library, select(faces.c.person_id).where(faces.c.id == library.faces[0][0])) == [
        (library.ada,)
    ]
    assert rows(library, select(persons.c.id).where(persons.c.id == library.bob)) == [(library.bob,)]
    assert len(rows(library, select(faces.c.id).where(faces.c.image_id == library.photos[0]))) == 3
    # The app's own pages (same origin), and clients that are no browser, may edit.
    same_site = {"Origin": "http://testserver", "Sec-Fetch-Site": "same-origin"}
    assert types(client.patch(f"/api/persons/{library.bob}", json={"name": "Bobby"}, headers=same_site))
    assert types(client.post(url)) == ["persons.updated"]


def test_on_localhost_only_requests_addressed_to_it(library: Library) -> None:
    """DNS rebinding: another site's name pointed at 127.0.0.1 reaches the app, but not by its name."""
    with TestClient(
        create_app(library.settings, host="127.0.0.1"), base_url="http://127.0.0.1:8000"
    ) as client:
        assert client.get("/api/persons").status_code == 200
        assert client.get("/api/persons", headers={"Host": "localhost:8000"}).status_code == 200
        rebound = client.get("/api/persons", headers={"Host": "evil.example:8000"})
        assert rebound.status_code == 400
        assert "Ada" not in rebound.text


# --- libraries -------------------------------------------------------------------------------------------


def test_a_request_of_another_library_sees_none_of_this_one_and_edits_nothing(
    client: TestClient, library: Library
) -> None:
    other = {"library": "family 2"}
    listed = client.get("/api/persons", params=other)
    assert listed.status_code == 200
    assert listed.json()["total"] == 0
    assert client.get("/api/faces/unassigned", params=other).json() == []
    assert client.get("/api/suggestions/merges", params=other).json() == []
    face, photo = library.faces[0][0], library.photos[0]
    for response in (
        client.get(f"/api/persons/{library.ada}", params=other),
        client.patch(f"/api/persons/{library.ada}", params=other, json={"name": "Eve"}),
        client.post(f"/api/persons/{library.ada}/merge", params=other, json={"source_ids": [library.bob]}),
        client.delete(f"/api/persons/{library.ada}", params=other),
        client.post(f"/api/faces/{face}/assign", params=other, json={"person_id": None}),
        client.post(f"/api/faces/{face}/reject", params=other, json={}),
        client.get(f"/api/faces/{face}/thumbnail", params=other),
        client.get("/api/images", params={**other, "with": library.ada}),
        client.get(f"/api/images/{photo}", params=other),
        client.get(f"/api/images/{photo}/file", params=other),
        client.delete(f"/api/images/{photo}", params=other),
    ):
        refused(response, 403, "other_library", "another library")
        assert "Ada" not in response.text
    # The default library, named or not, is as it was.
    for params in ({}, {"library": "default"}):
        person = client.get(f"/api/persons/{library.ada}", params=params)
        assert person.status_code == 200
        assert person.json()["name"] == "Ada"
    refused(client.get("/api/persons", params={"library": "  "}), 422)
    refused(client.get("/api/persons", params={"library": "x" * 256}), 422)


def test_serve_library_is_the_library_of_a_request_that_names_none(library: Library) -> None:
    with TestClient(create_app(library.settings, library="family 2")) as client:
        assert client.get("/api/persons").json()["total"] == 0
        refused(client.get(f"/api/persons/{library.ada}"), 403, "other_library")
        assert client.get(f"/api/persons/{library.ada}", params={"library": "default"}).status_code == 200
        page = client.get("/")  # the pages: the served library, whatever a request names
        assert page.status_code == 200
        assert "Ada" not in page.text
        assert "Ada" not in client.get("/", params={"library": "default"}).text
    with TestClient(create_app(library.settings)) as client:
        assert "Ada" in client.get("/").text
