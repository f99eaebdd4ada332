"""Fixtures for serving and interop tests: tiny composed fusevlm folders, built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest


def build_model_folder(checkpoints, root: Path, vision: str = "clip", projector: str | dict = "mlp2x_gelu") -> Path:
    """An untrained tiny ``vision`` + ``projector`` + Llama fusevlm folder (16 image tokens)."""
    import torch

    from fusevlm import build_vlm

    torch.manual_seed(0)
    model, processor = build_vlm(str(checkpoints("vision", vision, hidden=64)), projector, str(checkpoints("llm", "llama")))
    folder = root / f"{vision}-{projector if isinstance(projector, str) else projector['type']}"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def model_folders(checkpoints, tmp_path_factory):
    """``get(vision, projector)`` -> a tiny fusevlm model folder, cached for the session."""
    root = tmp_path_factory.mktemp("serve-models")
    cache: dict[str, Path] = {}

    def get(vision: str = "clip", projector: str | dict = "mlp2x_gelu") -> Path:
        key = f"{vision}-{projector}"
        if key not in cache:
            cache[key] = build_model_folder(checkpoints, root, vision, projector)
        return cache[key]

    return get


@pytest.fixture(scope="session")
def tiny_model_dir(model_folders) -> Path:
    return model_folders("clip", "mlp2x_gelu")


