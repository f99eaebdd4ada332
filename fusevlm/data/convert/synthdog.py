"""SynthDoG (naver-clova-ix/synthdog-en, synthdog-zh on the Hugging Face hub) -> OCR conversations.

Release format: parquet shards `data/{train,validation}-*.parquet` with two columns,
  image         struct {bytes: binary, path: string}  (the rendered page, JPEG)
  ground_truth  string, JSON: {"gt_parse": {"text_sequence": "<all text on the page>"}, ...}

Each row becomes one `ocr` conversation: a transcription instruction (English, or Chinese for synthdog-zh) and
the text sequence. Image bytes are written, only for the rows that survive sampling, to
`<image_dir>/<shard stem>/<row:06d>.jpg`, and records refer to them relative to `image_dir` (which is then the
dataset's image_root). Non-JPEG bytes are re-encoded to JPEG and counted.

Language: `--lang`, else a `synthdog-zh` / `synthdog-en` in an input path, else the text itself (zh when at least
30% of the first rows' characters are CJK).
"""

from __future__ import annotations

import io
import json
import re
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .common import Context, ConvertError, Where, expand_inputs, make_record

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_JPEG_MAGIC = b"\xff\xd8\xff"


def _open(path: Path) -> Any:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises ArrowInvalid / OSError for non-parquet files
        raise ConvertError(path, f"not a readable parquet file: {e}") from e
    names = pf.schema_arrow.names
    for column in ("image", "ground_truth"):
        if column not in names:
            raise ConvertError(path, f"missing column (columns are {names})", field=column)
    return pf


def _texts(pf: Any, path: Path) -> Iterator[tuple[int, str]]:
    """Yield (row, text_sequence) of one shard, reading only the ground_truth column."""
    row = 0
    for batch in pf.iter_batches(columns=["ground_truth"], batch_size=8192):
        for raw in batch.column(0).to_pylist():
            where = Where(path, row)
            if not isinstance(raw, str):
                raise where.error(f"expected a JSON string, got {type(raw).__name__}", "ground_truth")
            try:
                gt = json.loads(raw)
            except json.JSONDecodeError as e:
                raise where.error(f"not valid JSON: {e.msg}", "ground_truth") from e
            parse = where.get(gt, "gt_parse", dict, label="ground_truth.gt_parse")
            text = where.get(parse, "text_sequence", str, label="ground_truth.gt_parse.text_sequence")
            yield row, text
            row += 1


def _detect_lang(paths: list[Path], first: Any, first_path: Path) -> str:
    hints = {lang for p in paths for lang in ("zh", "en") if f"synthdog-{lang}" in str(p).lower()}
    if len(hints) == 1:
        return hints.pop()
    sample = []
    for i, (_, text) in enumerate(_texts(first, first_path)):
        if i >= 200:
            break
        sample.append(text)
    chars = "".join(sample).replace(" ", "")
    return "zh" if chars and len(_CJK.findall(chars)) >= 0.3 * len(chars) else "en"


def convert_synthdog(inputs: list[str | Path], ctx: Context) -> Iterator[dict[str, Any]]:
    paths = expand_inputs(inputs, (".parquet",))
    stems = [p.stem for p in paths]
    if len(set(stems)) != len(stems):
        raise ValueError(f"synthdog shards must have distinct file names (they name the image folders): {stems}")
    if ctx.image_dir is None:
        raise ValueError("synthdog needs an image_dir to write the images to")
    shards = [_open(p) for p in paths]
    if ctx.lang is None:
        ctx.lang = _detect_lang(paths, shards[0], paths[0])
    ctx.unit = "rows"
    ctx.extra.update(images_written=0, images_reencoded=0)

    sources: dict[str, tuple[int, int]] = {}  # image path -> (shard, row), for writing the selected images
    for s, (path, pf) in enumerate(zip(paths, shards, strict=True)):
        rows = pf.metadata.num_rows
        for row, text in ctx.progress(_texts(pf, path), total=rows, desc=f"synthdog {path.name}"):
            ctx.read += 1
            text = text.strip()
            if not text:
                ctx.skip("empty text")
                continue
            image = f"{path.stem}/{row:06d}.jpg"
            sources[image] = (s, row)
            yield make_record(f"synthdog_{ctx.lang}_{path.stem}_{row:06d}", image,
                              [(ctx.template("ocr"), text)], "ocr")

    ctx.after_sampling.append(lambda records: _write_images(records, paths, shards, sources, ctx))


def _write_images(records: list[dict[str, Any]], paths: list[Path], shards: list[Any],
                  sources: dict[str, tuple[int, int]], ctx: Context) -> None:
    """Write the image bytes of the selected rows, reading only the row groups that hold them."""
    assert ctx.image_dir is not None
    wanted: dict[int, dict[int, str]] = defaultdict(dict)  # shard -> row -> image path
    for rec in records:
        s, row = sources[rec["image"]]
        wanted[s][row] = rec["image"]
    for s in sorted(wanted):
        path, pf, rows = paths[s], shards[s], wanted[s]
        start = 0
        groups = range(pf.metadata.num_row_groups)
        for g in ctx.progress(groups, total=len(groups), desc=f"images {path.name}"):
            n = pf.metadata.row_group(g).num_rows
            hits = [r for r in range(start, start + n) if r in rows]
            if hits:
                column = pf.read_row_group(g, columns=["image"]).column(0)
                for r in hits:
                    _write_one(column[r - start].as_py(), ctx.image_dir / rows[r], Where(path, r), ctx)
            start += n


def _write_one(value: Any, target: Path, where: Where, ctx: Context) -> None:
    data = value.get("bytes") if isinstance(value, dict) else None
    if not isinstance(data, bytes) or not data:
        raise where.error(f"expected image bytes, got {type(data).__name__}", "image.bytes")
    if not data.startswith(_JPEG_MAGIC):
        from PIL import Image

        try:
            with Image.open(io.BytesIO(data)) as im:
                out = io.BytesIO()
                im.convert("RGB").save(out, format="JPEG", quality=95)
        except Exception as e:
            raise where.error(f"image bytes are not a readable image: {e}", "image.bytes") from e
        data = out.getvalue()
        ctx.extra["images_reencoded"] += 1
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    ctx.extra["images_written"] += 1
