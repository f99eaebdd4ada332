"""Fixtures: one tiny model folder per session, small benchmarks in the official formats, a fake generator."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # eval_run_helpers, in any import mode

from eval_run_helpers import (  # noqa: E402
    Bench,
    FakeGenerator,
    GenerationSpy,
    make_gqa,
    make_mmbench,
    make_textvqa,
)


@pytest.fixture(scope="session")
def tiny_model(checkpoints, tmp_path_factory) -> Path:
    """A composed (untrained) CLIP + MLP + Llama fusevlm folder: 16 image tokens, well under 1M parameters."""
    import torch

    from fusevlm import build_vlm

    torch.manual_seed(0)
    model, processor = build_vlm(
        str(checkpoints("vision", "clip", hidden=32)), "mlp2x_gelu", str(checkpoints("llm", "llama"))
    )
    folder = tmp_path_factory.mktemp("model") / "tiny"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture
def textvqa(tmp_path: Path) -> Bench:
    return make_textvqa(tmp_path / "textvqa")


@pytest.fixture
def gqa(tmp_path: Path) -> Bench:
    return make_gqa(tmp_path / "gqa")


@pytest.fixture
def mmbench(tmp_path: Path) -> Bench:
    return make_mmbench(tmp_path / "mmbench")


@pytest.fixture
def fake_generate(monkeypatch):
    """Install a FakeGenerator in the runner; the model loader is stubbed too, so no model is loaded."""
    from fusevlm.eval import runner

    def install(generator: FakeGenerator) -> FakeGenerator:
        class _Processor:
            image_token = "<image>"

        monkeypatch.setattr(runner, "generate_answers", generator)
        monkeypatch.setattr(runner, "load_model", lambda *a, **k: (object(), _Processor()))
        return generator

    return install


@pytest.fixture
def spy_generate(monkeypatch):
    """Install a GenerationSpy in the runner: the real model answers, the test sees what was asked."""
    from fusevlm.eval import runner

    def install(spy: GenerationSpy) -> GenerationSpy:
        monkeypatch.setattr(runner, "generate_answers", spy)
        return spy

    return install
