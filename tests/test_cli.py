"""The CLI: every command has a clear --help, wrong input is one line and exit 2, start-up is quiet."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
from typer.testing import CliRunner

from image_grouping.cli import app

CONSOLE_SCRIPT = Path(sys.executable).with_name("image-grouping")
DATABASE_VARIABLES = {"DATABASE_URL", "SQL_CONNECTION_STRING", "LOG_LEVEL", "LOG_FORMAT"}


def run_cli(tmp_path: Path, *arguments: str, **environment: str) -> subprocess.CompletedProcess[str]:
    """The installed console script in its own process, stderr no terminal (as in a log file or CI)."""
    base = {key: value for key, value in os.environ.items() if key not in DATABASE_VARIABLES}
    return subprocess.run(
        [str(CONSOLE_SCRIPT), *arguments],
        env=base
        | {"SYSTEM_STORAGE": str(tmp_path / "data"), "LOG_ROOT": str(tmp_path / "logs")}
        | environment,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


COMMANDS = [
    ["consume"],
    ["scan"],
    ["recluster"],
    ["migrate"],
    ["report"],
    ["serve"],
    ["healthcheck"],
    ["eval", "detection"],
    ["eval", "grouping"],
    ["persons", "list"],
    ["persons", "show"],
    ["persons", "suggest-merges"],
    ["faces", "unassigned"],
    ["images", "with"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_has_help(command: list[str]) -> None:
    result = CliRunner().invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output
    # The first line of the docstring is the command's summary.
    summary_words = [word for word in result.output.split() if len(word) > 3]
    assert len(summary_words) > 5


@pytest.mark.parametrize("command", [["scan"], ["recluster"], ["migrate"], ["consume"]], ids=" ".join)
def test_commands_that_write_offer_dry_run(command: list[str]) -> None:
    result = CliRunner().invoke(app, [*command, "--help"])
    assert "--dry-run" in result.output


def test_invalid_setting_exits_with_the_variable_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIVENESS_MAX_AGE_SECONDS", "-1")
    result = CliRunner().invoke(app, ["healthcheck"])
    assert result.exit_code == 2
    assert "LIVENESS_MAX_AGE_SECONDS" in result.output


def test_version() -> None:
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"image-grouping {version('image-grouping')}"


def test_service_and_mode_list_their_choices_and_refuse_others() -> None:
    help_text = CliRunner().invoke(app, ["consume", "--help"], env={"COLUMNS": "200"}).output
    assert "detection|recognition|both" in help_text
    assert "oneshot|loop" in help_text

    refused = CliRunner().invoke(app, ["consume", "--service", "detect"])
    assert refused.exit_code == 2
    assert "'detect' is not one of" in refused.output


@pytest.mark.parametrize(
    ("arguments", "environment", "expected"),
    [
        ([], {"DATABASE_URL": "not a url"}, "DATABASE_URL: not a database URL"),
        (["--db", "mysql://app:s3cr3t@db/faces"], {}, "DATABASE_URL: unsupported database 'mysql'"),
        (["--db", "postgresql://app:s3cr3t@127.0.0.1:1/faces"], {}, "DATABASE_URL: cannot connect to"),
        (
            ["--db", "postgresql://postgres:s3cr3t@127.0.0.1:5432/no_such_database_here"],
            {},
            'database "no_such_database_here" does not exist',
        ),
        (
            [],
            {"SQL_CONNECTION_STRING": "Driver={No Such Driver};Server=db;Uid=sa;Pwd=s3cr3t"},
            "SQL_CONNECTION_STRING: cannot connect to",
        ),
    ],
    ids=["not a URL", "unsupported scheme", "refused port", "missing database", "odbc driver"],
)
def test_a_database_that_cannot_be_used_is_one_line_and_exit_2(
    tmp_path: Path, arguments: list[str], environment: dict[str, str], expected: str
) -> None:
    result = run_cli(tmp_path, "recluster", *arguments, **environment)

    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().count("\n") == 0, result.stderr  # one line, no traceback
    assert expected in result.stderr
    assert "s3cr3t" not in result.stderr


def test_start_up_is_quiet_unless_log_level_is_debug(tmp_path: Path) -> None:
    (tmp_path / "photos").mkdir()
    arguments = [
        "scan",
        str(tmp_path / "photos"),
        "--no-report",
        "--db",
        f"sqlite:///{tmp_path / 'q.sqlite3'}",
    ]

    quiet = run_cli(tmp_path, *arguments)
    chatty = run_cli(tmp_path, *arguments, LOG_LEVEL="DEBUG")

    assert quiet.returncode == chatty.returncode == 0, quiet.stderr + chatty.stderr
    # No alembic set-up lines, no faiss library probing, no progress bar (stderr is no terminal).
    for noise in ("alembic", "faiss", "AVX", "analysing", "\r"):
        assert noise not in quiet.stderr
    assert "alembic" in chatty.stderr
    assert "faiss" in chatty.stderr
