"""One analyzer for the whole vision test session: loading the ONNX sessions is the slow part."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from image_grouping.bootstrap import load_analyzer
from image_grouping.config import Settings, load_settings
from image_grouping.vision import FaceAnalyzer


@pytest.fixture(scope="session")
def settings() -> Settings:
    return load_settings(intra_op_threads=1)


@pytest.fixture(scope="session")
def analyzer(settings: Settings) -> Iterator[FaceAnalyzer]:
    analyzer = load_analyzer(settings)
    yield analyzer
    analyzer.close()


@pytest.fixture(scope="session")
def groups_dir(eval_dir: Path) -> Path:
    return eval_dir / "groups"
