"""Converters from the seed's datasets' official release formats into our conversation JSON.

    from fusevlm.data.convert import convert
    stats = convert("vg_regions", ["region_descriptions.json", "image_data.json"], "data/vg_regions.json",
                    num_samples=500_000, seed=0)

or on the command line: `fusevlm convert vg_regions --input ... --output data/vg_regions.json --num-samples 500000`.

Sources (one module each; their docstrings give the release format and the naming rules):
  synthdog     OCR           naver-clova-ix/synthdog-en / -zh parquet shards (writes the images out)
  cc3m         caption       Train_GCC-training.tsv, or LLaVA's 558k / 595k pretraining JSON
  sbu          caption       sbu-captions-all.json, or HF sbu_captions rows
  vg_vqa       vqa           Visual Genome question_answers.json (+ image_data.json)
  vg_regions   grounding     Visual Genome region_descriptions.json + image_data.json
  vg_objects   grounded_caption  Visual Genome objects.json + image_data.json
  ocr_vqa      vqa           OCR-VQA dataset.json

The output is a JSON list, one record per line. Records are checked against `image_root` when it is given
(missing image files are skipped and counted), then sampled with `num_samples` and `seed`.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from .cc3m import convert_cc3m
from .common import LANGS, TASKS, TEMPLATES, Context, ConvertError, format_box, normalize_box, sample_indices
from .ocr_vqa import SPLITS, convert_ocr_vqa
from .sbu import convert_sbu
from .synthdog import convert_synthdog
from .vg_objects import convert_vg_objects
from .vg_regions import convert_vg_regions
from .vg_vqa import convert_vg_vqa

Converter = Callable[[list[str | Path], Context], Iterator[dict[str, Any]]]

CONVERTERS: dict[str, Converter] = {
    "synthdog": convert_synthdog,
    "cc3m": convert_cc3m,
    "sbu": convert_sbu,
    "vg_vqa": convert_vg_vqa,
    "vg_regions": convert_vg_regions,
    "vg_objects": convert_vg_objects,
    "ocr_vqa": convert_ocr_vqa,
}

# options beyond the common ones, and the sources they apply to (anything else is refused, not ignored)
OPTIONS: dict[str, tuple[str, ...]] = {
    "image_dir": ("synthdog",),
    "image_name": ("cc3m", "sbu"),
    "split": ("ocr_vqa",),
    "max_turns": ("vg_vqa", "ocr_vqa"),
}

__all__ = ["CONVERTERS", "OPTIONS", "TASKS", "TEMPLATES", "Context", "ConvertError", "convert", "format_box",
           "normalize_box", "sample_indices"]


def convert(source: str, inputs: str | Path | Iterable[str | Path], output: str | Path,
            num_samples: int | None = None, seed: int = 0, image_root: str | Path | None = None, *,
            image_dir: str | Path | None = None, lang: str | None = None, split: str | None = None,
            image_name: str | None = None, max_turns: int | None = None,
            progress: bool = False) -> dict[str, Any]:
    """Convert `inputs` of dataset `source` into conversation JSON at `output`; return the run's stats.

    num_samples: None keeps every record; fewer down-samples, more up-samples (repeats get ids `<id>#k`).
    seed: drives the instruction templates and the sampling; a run is reproducible from (inputs, options, seed).
    image_root: when given, records whose image file is not under it are skipped ("image file not found").
    image_dir (synthdog): where the images are written; default `<output stem>_images/` beside the output.
    lang: "en" | "zh", the instructions' language (synthdog detects it when not given; others default to en).
    split (ocr_vqa): "train" | "val" | "test".  image_name (cc3m TSV, sbu): the file-name rule, see cc3m.py.
    max_turns (vg_vqa, ocr_vqa): most QA turns in one conversation (default 10).
    progress: show tqdm bars for large inputs.
    """
    if source not in CONVERTERS:
        raise ValueError(f"unknown source {source!r}; known: {', '.join(CONVERTERS)}")
    given = {"image_dir": image_dir, "image_name": image_name, "split": split, "max_turns": max_turns}
    for name, value in given.items():
        if value is not None and source not in OPTIONS[name]:
            raise ValueError(f"option {name} does not apply to {source} (only to {', '.join(OPTIONS[name])})")
    if lang is not None and lang not in LANGS:
        raise ValueError(f"lang must be one of {LANGS}, got {lang!r}")
    if split is not None and split not in SPLITS:
        raise ValueError(f"split must be one of {tuple(SPLITS)}, got {split!r}")
    if max_turns is not None and max_turns < 1:
        raise ValueError(f"max_turns must be >= 1, got {max_turns}")
    if source == "synthdog" and image_root is not None:
        raise ValueError("image_root does not apply to synthdog: it writes the images itself (see image_dir)")
    if num_samples is not None and num_samples < 0:
        raise ValueError(f"num_samples must be >= 0, got {num_samples}")

    inputs = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    output = Path(output)
    if source == "synthdog" and image_dir is None:
        image_dir = output.parent / f"{output.stem}_images"
    ctx = Context(
        source=source, lang=lang, split=split, max_turns=max_turns or 10,
        image_name=image_name or "{index:09d}.jpg", image_dir=Path(image_dir) if image_dir else None,
        rng=random.Random(f"templates:{seed}"), show_progress=progress,
    )
    root = Path(image_root) if image_root is not None else None

    # Records are kept JSON-encoded until sampling, so that sources with millions of records fit in memory.
    encoded: list[str] = []
    for record in CONVERTERS[source](inputs, ctx):
        if root is not None and not (root / record["image"]).is_file():
            ctx.skip("image file not found")
            continue
        encoded.append(json.dumps(record, ensure_ascii=False))

    candidates = len(encoded)
    picked = sample_indices(candidates, num_samples, random.Random(f"sample:{seed}"))
    selected = [encoded[index] if not copy else _repeat(encoded[index], copy) for index, copy in picked]
    del encoded
    if ctx.after_sampling:  # e.g. synthdog writes the selected images
        records = [json.loads(line) for line in selected]
        for hook in ctx.after_sampling:
            hook(records)
        del records
    _write(selected, output)

    stats: dict[str, Any] = {
        "source": source,
        "inputs": [str(p) for p in inputs],
        "output": str(output),
        "read": ctx.read,
        "unit": ctx.unit,
        "skipped": dict(sorted(ctx.skipped.items())),
        "candidates": candidates,  # records made (and found on disk) before sampling
        "written": len(selected),
        "repeated": sum(1 for _, copy in picked if copy),
        "num_samples": num_samples,
        "seed": seed,
        "lang": ctx.lang or "en",
        **ctx.extra,
    }
    if ctx.image_dir is not None:
        stats["image_dir"] = str(ctx.image_dir)
    return stats


def _repeat(line: str, copy: int) -> str:
    """The `copy`-th repeat of an encoded record: the same record with id `<id>#<copy>`."""
    record = json.loads(line)
    record["id"] = f"{record['id']}#{copy}"
    return json.dumps(record, ensure_ascii=False)


def _write(lines: list[str], output: Path) -> None:
    """Write the encoded records as a JSON list, one per line, atomically (a temporary file renamed into place)."""
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(output.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("[\n")
        for i, line in enumerate(lines):
            f.write(line + (",\n" if i + 1 < len(lines) else "\n"))
        f.write("]\n")
    os.replace(tmp, output)
