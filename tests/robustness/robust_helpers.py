"""Shared by the robustness tests: small datasets of coloured squares and recipes over the tiny checkpoints."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from PIL import Image

REPO = Path(__file__).resolve().parents[2]
COLORS = {"red": (220, 30, 30), "green": (30, 180, 30), "blue": (30, 30, 220), "yellow": (230, 220, 20)}


def png_bytes(image: Image.Image, fmt: str = "PNG", **kwargs: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def qa(question: str = "<image>\nWhat color is the square?", answer: str = "red") -> list[dict]:
    return [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]


def good_records(images: Path, n: int = 3, prefix: str = "good") -> list[dict]:
    """``n`` valid records, each with its own square image written under ``images``."""
    images.mkdir(parents=True, exist_ok=True)
    names = sorted(COLORS)
    records = []
    for i in range(n):
        color = names[i % len(names)]
        file = f"{prefix}_{i}.png"
        Image.new("RGB", (32, 32), COLORS[color]).save(images / file)
        records.append({"id": f"{prefix}-{i}", "image": file, "conversations": qa(answer=color)})
    return records


def write_records(path: Path, records: list[Any], fmt: str = "json") -> Path:
    """A JSON list or JSONL file; an item that is ``bytes`` is written as that raw JSONL line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "json":
        path.write_text(json.dumps(records), encoding="utf-8")
        return path
    lines = [item if isinstance(item, bytes) else json.dumps(item).encode() for item in records]
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def recipe(parts: dict[str, str], data: list[dict] | dict, output_dir: Path, **overrides: Any) -> dict[str, Any]:
    """A small align recipe over the tiny checkpoints: 1 step of batch 4 unless told otherwise."""
    values: dict[str, Any] = {
        "model": {"vision": parts["vision"], "projector": "mlp2x_gelu", "llm": parts["llm"]},
        "data": data if isinstance(data, list) else [data],
        "output_dir": str(output_dir),
        "stage": "align",
        "template": "plain",
        "model_max_length": 128,
        "per_device_train_batch_size": 4,
        "learning_rate": 5e-3,
        "max_steps": 1,
        "logging_steps": 1,
        "save_strategy": "no",
        "seed": 0,
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
        "report_to": "none",
    }
    values.update(overrides)
    return values


def cli_env() -> dict[str, str]:
    """The environment for ``python -m fusevlm.cli`` subprocesses: this checkout first on the path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env["OMP_NUM_THREADS"] = "1"  # as the tests' own process (conftest.one_torch_thread)
    return env


def start_cli(*args: str, **kwargs: Any) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "fusevlm.cli", *args], env=cli_env(), cwd=str(REPO), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, **kwargs,
    )
