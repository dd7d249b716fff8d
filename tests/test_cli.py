"""Every command of the CLI has a clear --help."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from image_grouping.cli import app

COMMANDS = [
    ["consume"],
    ["scan"],
    ["recluster"],
    ["migrate"],
    ["report"],
    ["healthcheck"],
    ["eval", "detection"],
    ["eval", "grouping"],
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
