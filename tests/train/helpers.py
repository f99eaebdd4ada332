"""A small LLaVA-format dataset of coloured squares and recipes over the tiny checkpoints."""

from __future__ import annotations

import json
import random
from pathlib import Path

from PIL import Image

COLORS = {"red": (220, 30, 30), "green": (30, 180, 30), "blue": (30, 30, 220), "yellow": (230, 220, 20)}


def make_dataset(root: Path, n: int = 16, seed: int = 0, name: str = "train.json", task: str | None = None,
                 question: str = "What color is the square?") -> Path:
    rng = random.Random(seed)
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(n):
        color = rng.choice(sorted(COLORS))
        file = f"{Path(name).stem}_{i}.png"
        Image.new("RGB", (32, 32), COLORS[color]).save(images / file)
        record = {"id": f"{Path(name).stem}-{i}", "image": file,
                  "conversations": [{"from": "human", "value": f"<image>\n{question}"},
                                    {"from": "gpt", "value": color}]}
        if task:
            record["task"] = task
        records.append(record)
    path = root / name
    path.write_text(json.dumps(records))
    return path


def recipe(tmp: Path, data: list[dict], **overrides) -> dict:
    values = {
        "data": data,
        "output_dir": str(tmp / "out"),
        "stage": "align",
        "template": "plain",
        "model_max_length": 128,
        "per_device_train_batch_size": 4,
        "learning_rate": 5e-3,
        "max_steps": 6,
        "logging_steps": 1,
        "save_strategy": "no",
        "seed": 0,
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
    }
    values.update(overrides)
    return values
