"""Tiny model configs written as files, for plans whose every number is computed by hand in the tests."""

import json
from pathlib import Path

import pytest

# A CLIP tower of width 8, one layer, 28 px images of 14 px patches: a 2x2 grid (4 patch tokens + CLS).
TINY_CLIP = {
    "model_type": "clip_vision_model",
    "hidden_size": 8,
    "intermediate_size": 16,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "image_size": 28,
    "patch_size": 14,
    "num_channels": 3,
}
# A Llama of width 16, two layers, 2 heads, MLP width 32, 50 tokens, untied head.
TINY_LLAMA = {
    "model_type": "llama",
    "hidden_size": 16,
    "intermediate_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "vocab_size": 50,
    "max_position_embeddings": 64,
    "tie_word_embeddings": False,
}


def write_folder(path: Path, config: dict) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config))
    return path


@pytest.fixture
def tiny_folders(tmp_path):
    """(vision folder, llm folder): local checkpoint folders holding only a config.json, as the planner needs."""
    return write_folder(tmp_path / "clip", TINY_CLIP), write_folder(tmp_path / "llama", TINY_LLAMA)


@pytest.fixture
def write_recipe(tmp_path, tiny_folders):
    """Write a recipe over the tiny folders; keyword arguments add or replace top-level keys."""
    vision, llm = tiny_folders

    def write(name: str = "tiny.yaml", **values) -> Path:
        recipe = {
            "model": {"vision": str(vision), "projector": "mlp2x_gelu", "llm": str(llm)},
            "data": [{"path": "data/x.json"}],
            "stage": "instruct",
            "model_max_length": 8,
            "output_dir": str(tmp_path / "out"),
            "per_device_train_batch_size": 2,
            "bf16": True,
            **values,
        }
        path = tmp_path / name
        path.write_text(json.dumps(recipe))  # JSON is YAML
        return path

    return write
