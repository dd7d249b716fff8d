"""Fixtures of the service tests; the helpers they use live in service_helpers.py."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from service_helpers import RunningService, running_service, service_settings


@pytest.fixture(scope="module")
async def service(
    tmp_path_factory: pytest.TempPathFactory, postgres_url: str, rabbitmq_url: str
) -> AsyncIterator[RunningService]:
    """The detection service, shared by a test module (the model loads once)."""
    settings = service_settings(tmp_path_factory.mktemp("service"), postgres_url, rabbitmq_url)
    async with running_service(settings) as running:
        yield running


FIGURES = pytest.StashKey[dict[str, str]]()


@pytest.fixture(scope="session")
def figures(request: pytest.FixtureRequest) -> dict[str, str]:
    """Measurements a test reports (name -> value), printed at the end of the run."""
    return request.config.stash.setdefault(FIGURES, {})


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    measured = config.stash.get(FIGURES, {})
    if measured:
        terminalreporter.section("figures")
        for name, value in measured.items():
            terminalreporter.line(f"{name}: {value}")
