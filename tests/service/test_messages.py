"""The message envelope: what is accepted, and why anything else is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from image_grouping import errors
from image_grouping.errors import InvalidMessageError
from image_grouping.models.messages import (
    EVENT_TYPES,
    FacesDetected,
    ImageUploaded,
    ReclusterRequested,
    UnsupportedVersionError,
    new_event,
    parse_event,
)


def test_an_event_survives_the_round_trip() -> None:
    event = new_event(ImageUploaded(image_id=42, path="//server/files/a.jpg"))
    parsed = parse_event(event.to_json(), ImageUploaded)
    assert parsed == event
    assert parsed.data.image_id == "42"  # the uploader's numeric ids arrive as strings
    assert json.loads(event.to_json())["specversion"] == "1.0"


def test_the_data_type_is_picked_by_the_event_type() -> None:
    recluster = new_event(ReclusterRequested(reason="interval")).to_json()
    detected = new_event(FacesDetected(image_id="1", face_ids=[3, 4], face_count=2, model_pack="p")).to_json()
    assert isinstance(parse_event(recluster, FacesDetected, ReclusterRequested).data, ReclusterRequested)
    assert parse_event(detected, FacesDetected, ReclusterRequested).data.face_ids == [3, 4]


def _body(**changes: object) -> bytes:
    envelope = json.loads(new_event(ImageUploaded(image_id="1", path="a.jpg")).to_json())
    return json.dumps(envelope | changes).encode()


@pytest.mark.parametrize(
    ("body", "error", "words"),
    [
        (b"\xff\xfe not json", InvalidMessageError, "not a CloudEvents message"),
        (b"[1, 2]", InvalidMessageError, "not a CloudEvents message"),
        (_body(specversion="0.3"), UnsupportedVersionError, "'0.3'"),
        (_body(dataversion=2), UnsupportedVersionError, "dataversion 2"),
        (_body(type="faces.detected"), InvalidMessageError, "got event type 'faces.detected'"),
        (_body(data={"image_id": "1"}), InvalidMessageError, "data.path"),
        (_body(data={"image_id": "", "path": "a.jpg"}), InvalidMessageError, "data.image_id"),
        (_body(time="yesterday"), InvalidMessageError, "time"),
    ],
)
def test_anything_else_is_an_invalid_message(body: bytes, error: type[Exception], words: str) -> None:
    with pytest.raises(error, match=words) as raised:
        parse_event(body, ImageUploaded)
    assert raised.value.reason in {"invalid_message", "unsupported_schema_version"}


def test_asyncapi_documents_every_event_and_every_dead_letter_reason() -> None:
    document = yaml.safe_load((Path(__file__).parents[2] / "docs" / "asyncapi.yaml").read_text())
    addresses = {channel["address"] for channel in document["channels"].values()}
    assert set(EVENT_TYPES) <= addresses
    for event_type, data_type in EVENT_TYPES.items():
        [message] = [m for m in document["components"]["messages"].values() if m["name"] == event_type]
        documented = message["payload"]["allOf"][1]["properties"]["data"]["properties"]
        assert set(data_type.model_fields) <= set(documented), event_type
    reasons = {
        error.reason
        for error in vars(errors).values()
        if isinstance(error, type)
        and issubclass(error, errors.BadInputError)
        and error is not errors.BadInputError
    } | {UnsupportedVersionError.reason}
    dead_letter = document["components"]["messages"]["deadLetter"]
    assert reasons <= set(dead_letter["headers"]["properties"]["x-dead-letter-reason"]["enum"])
