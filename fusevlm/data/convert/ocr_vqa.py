"""OCR-VQA (`dataset.json` of the official release) -> multi-turn VQA conversations about book covers.

Release format: one JSON object keyed by image id, each value
  {"imageURL": str, "questions": [str], "answers": [str], "title": str, "authorName": str, "genre": str,
   "split": 1 (train) | 2 (val) | 3 (test)}
The official download script saves each cover as `images/<key><ext>`, `<ext>` the extension of imageURL; the
record's image path is `<key><ext>` (`.jpg` when the URL has none), so image_root is that `images/` folder.

All QAs of an image form one conversation (more than `--max-turns` are cut into several), ids
`ocr_vqa_<key>_<chunk>`, task `vqa`. `--split train|val|test` keeps one split. `read` counts images.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlparse

from .common import Context, Where, chunks, expand_inputs, make_record, read_json

SPLITS = {"train": 1, "val": 2, "test": 3}


def convert_ocr_vqa(inputs: list[str | Path], ctx: Context) -> Iterator[dict[str, Any]]:
    ctx.unit = "images"
    want = SPLITS[ctx.split] if ctx.split else None
    for path in expand_inputs(inputs, (".json",)):
        data = read_json(path)
        if not isinstance(data, dict):
            raise Where(path).error(f"expected an object keyed by image id, got {type(data).__name__}")
        for key, entry in ctx.progress(data.items(), total=len(data), desc=f"ocr_vqa {path.name}"):
            ctx.read += 1
            where = Where(path, key)
            url = where.get(entry, "imageURL", str)
            questions = where.get(entry, "questions", list)
            answers = where.get(entry, "answers", list)
            split = where.get(entry, "split", int)
            if split not in SPLITS.values():
                raise where.error(f"expected 1 (train), 2 (val) or 3 (test), got {split}", "split")
            if len(questions) != len(answers):
                raise where.error(f"has {len(answers)} entries but questions has {len(questions)}", "answers")
            if want is not None and split != want:
                ctx.skip(f"not in split {ctx.split}")
                continue
            turns = []
            for i, (q, a) in enumerate(zip(questions, answers, strict=True)):
                if not isinstance(q, str):
                    raise where.error(f"expected a string, got {type(q).__name__}", f"questions[{i}]")
                if isinstance(a, (int, float)) and not isinstance(a, bool):
                    a = str(a)  # a few answers (years, counts) are numbers
                if not isinstance(a, str):
                    raise where.error(f"expected a string, got {type(a).__name__}", f"answers[{i}]")
                if q.strip() and a.strip():
                    turns.append((q.strip(), a.strip()))
                else:
                    ctx.skip("qa pair: empty question or answer")
            if not turns:
                ctx.skip("image without questions")
                continue
            image = f"{key}{PurePosixPath(urlparse(url).path).suffix or '.jpg'}"
            for c, chunk in enumerate(chunks(turns, ctx.max_turns)):
                template = ctx.template("vqa")
                yield make_record(f"ocr_vqa_{key}_{c}", image,
                                  [(template.format(question=q), a) for q, a in chunk], "vqa")
