"""Fixtures: a tiny CodeFuse-VLM release folder in the seed's layout, built once per session."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # seed_files, in any import mode

from seed_files import write_llm, write_release  # noqa: E402


@pytest.fixture(scope="session")
def release(tmp_path_factory) -> Path:
    return write_release(tmp_path_factory.mktemp("seed") / "CodeFuse-VLM-14B")


@pytest.fixture(scope="session")
def seed_llm(tmp_path_factory) -> Path:
    return write_llm(tmp_path_factory.mktemp("seed-llm") / "llm")
