"""`fusevlm init` writes a model folder that transformers' Auto classes load."""

import subprocess
import sys

import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from fusevlm import FuseVLMProcessor


def test_init_writes_a_loadable_folder_and_prints_parameters(tmp_path, checkpoints):
    out = tmp_path / "model"
    vision = (
        f"{checkpoints('vision', 'siglip', hidden=32)},{checkpoints('vision', 'dinov2', hidden=32, patch=4)}"
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "fusevlm.cli",
            "init",
            "--vision",
            vision,
            "--projector",
            "pixel_shuffle",
            "--llm",
            str(checkpoints("llm", "qwen2")),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    for part in ("vision_tower", "projector", "language_model", "all"):
        assert part in result.stdout
    assert "image tokens per image: 4" in result.stdout
    assert (out / "model.safetensors").exists() and (out / "config.json").exists()
    assert not list(out.glob("*.bin"))

    model = AutoModelForImageTextToText.from_pretrained(out).eval()
    processor = AutoProcessor.from_pretrained(out)
    assert isinstance(processor, FuseVLMProcessor)
    assert type(model).__name__ == "FuseVLMForConditionalGeneration"
    assert model.vision_tower.name == "fused" and model.projector.name == "pixel_shuffle"
    batch = processor(text=["<image> hello"], images=[Image.new("RGB", (32, 32), "white")])
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape[:2] == batch["input_ids"].shape


def test_init_with_an_unknown_projector_fails_cleanly(tmp_path, checkpoints):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "fusevlm.cli",
            "init",
            "--vision",
            str(checkpoints("vision", "clip", hidden=64)),
            "--projector",
            "mlp_bogus",
            "--llm",
            str(checkpoints("llm", "llama")),
            "--out",
            str(tmp_path / "m"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0
    assert "unknown projector 'mlp_bogus'" in result.stderr
    assert not (tmp_path / "m").exists()
