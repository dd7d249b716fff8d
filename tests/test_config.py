"""Settings come from the environment; a bad value stops start-up naming the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from image_grouping.config import SettingsError, load_settings


def test_defaults_are_those_of_the_original_service(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SERVICE", "MODE", "INTERVAL_SECONDS", "RECOGNIZER_ARGS"):
        monkeypatch.delenv(name, raising=False)
    settings = load_settings(_env_file=None)
    assert settings.service == "recognition"
    assert settings.mode == "oneshot"
    assert settings.interval_seconds == 900
    assert settings.recluster_requested


def test_environment_overrides_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SERVICE", "detection")
    monkeypatch.setenv("MODE", "loop")
    monkeypatch.setenv("INTERVAL_SECONDS", "60")
    monkeypatch.setenv("RECOGNIZER_ARGS", "")
    monkeypatch.setenv("DB_PREFIX", "\\\\server\\files\\location\\")
    settings = load_settings(_env_file=None)
    assert (settings.service, settings.mode, settings.interval_seconds) == ("detection", "loop", 60)
    assert not settings.recluster_requested
    assert settings.db_prefix == "//server/files/location"


def test_env_file_is_read(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MODE", raising=False)
    env_file = tmp_path / ".env"
    env_file.write_text("MODE=loop\nINTERVAL_SECONDS=5\n")
    settings = load_settings(_env_file=env_file)
    assert settings.mode == "loop"
    assert settings.interval_seconds == 5


@pytest.mark.parametrize(
    ("variable", "value"),
    [("MODE", "sometimes"), ("INTERVAL_SECONDS", "-5"), ("SERVICE", "everything"), ("MIN_FACE_SIZE", "x")],
)
def test_invalid_value_names_the_variable(monkeypatch: pytest.MonkeyPatch, variable: str, value: str) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError, match=variable):
        load_settings(_env_file=None)


def test_error_shows_the_bad_value_but_no_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RABBITMQ_URL", "amqp://user:hunter2@host/")
    monkeypatch.setenv("METRICS_PORT", "not-a-port")
    with pytest.raises(SettingsError) as caught:
        load_settings(_env_file=None)
    message = str(caught.value)
    assert "METRICS_PORT" in message
    assert "not-a-port" in message
    assert "hunter2" not in message


def test_storage_paths_follow_system_storage_unless_set(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("THUMBNAIL_SAVE_PATH", "IMAGE_SAVE_PATH"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SYSTEM_STORAGE", "/srv/faces")
    settings = load_settings(_env_file=None)
    assert settings.thumbnail_save_path == Path("/srv/faces/thumbnails")
    assert settings.image_save_path == Path("/srv/faces/images")

    monkeypatch.setenv("THUMBNAIL_SAVE_PATH", "/mnt/thumbs")
    assert load_settings(_env_file=None).thumbnail_save_path == Path("/mnt/thumbs")


def test_production_can_refuse_a_non_commercial_model_pack(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACCEPT_NON_COMMERCIAL_MODELS", "false")
    monkeypatch.delenv("MODEL_PACK", raising=False)
    monkeypatch.delenv("MODEL_DIR", raising=False)

    with pytest.raises(SettingsError, match="ACCEPT_NON_COMMERCIAL_MODELS") as refused:
        load_settings(_env_file=None)
    assert "non-commercial" in str(refused.value)
    assert "MODEL_PACK=yunet_dlib" in str(refused.value)

    # The licence-clean pack starts; so does an explicit acceptance, and the unset default (it warns).
    assert load_settings(_env_file=None, model_pack="yunet_dlib").accept_non_commercial_models is False
    monkeypatch.setenv("ACCEPT_NON_COMMERCIAL_MODELS", "true")
    assert load_settings(_env_file=None).model_pack == "buffalo_sc"
    monkeypatch.delenv("ACCEPT_NON_COMMERCIAL_MODELS")
    assert load_settings(_env_file=None).accept_non_commercial_models is None


def test_the_start_up_log_states_the_licence_of_the_pack_in_use(monkeypatch: pytest.MonkeyPatch) -> None:
    from image_grouping import bootstrap

    lines: list[tuple[str, str, dict[str, object]]] = []

    class Recorder:  # the module's logger may be configured and cached by earlier tests
        def info(self, event: str, **fields: object) -> None:
            lines.append(("info", event, fields))

        def warning(self, event: str, **fields: object) -> None:
            lines.append(("warning", event, fields))

    monkeypatch.setattr(bootstrap, "log", Recorder())
    bootstrap.log_model_licence(load_settings(_env_file=None, model_pack="buffalo_sc", model_dir=None))
    bootstrap.log_model_licence(
        load_settings(_env_file=None, model_pack="buffalo_sc", accept_non_commercial_models=True)
    )
    bootstrap.log_model_licence(load_settings(_env_file=None, model_pack="yunet_dlib"))

    (unaccepted, accepted, clean) = lines
    assert unaccepted[0] == "warning"
    assert "ACCEPT_NON_COMMERCIAL_MODELS" in unaccepted[1]
    assert "non-commercial" in str(unaccepted[2]["licence"])
    assert [(level, fields["commercial_use"]) for level, _, fields in (accepted, clean)] == [
        ("info", False),
        ("info", True),
    ]
    assert "CC0" in str(clean[2]["licence"])
