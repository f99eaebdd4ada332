"""Fixtures: a tiny CodeFuse-VLM release folder in the seed's layout, built once per session."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # seed_files, in any import mode
sys.path.insert(0, str(Path(__file__).parent.parent / "convert"))  # qwen_v1_reference: Qwen v1 written out

from qwen_v1_reference import CORPUS, train_byte_bpe, write_tiktoken  # noqa: E402
from seed_files import write_llm, write_release  # noqa: E402


@pytest.fixture(scope="session")
def vocab_file(tmp_path_factory) -> Path:
    """A Qwen-style tiktoken vocabulary (byte-level BPE ranks)."""
    return write_tiktoken(tmp_path_factory.mktemp("vocab") / "qwen.tiktoken", train_byte_bpe(CORPUS, 300))


@pytest.fixture(scope="session")
def release(vocab_file, tmp_path_factory) -> Path:
    return write_release(tmp_path_factory.mktemp("seed") / "CodeFuse-VLM-14B", vocab_file)


@pytest.fixture(scope="session")
def seed_llm(tmp_path_factory) -> Path:
    return write_llm(tmp_path_factory.mktemp("seed-llm") / "llm")
