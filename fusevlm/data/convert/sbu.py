"""SBU Captioned Photo Dataset -> caption conversations.

Inputs, told apart by suffix and shape:
- the official `sbu-captions-all.json` (from sbu-captions-all.tar.gz): one object of parallel lists
  `{"image_urls": [...], "captions": [...], "user_ids": [...]}`;
- the Hugging Face `sbu_captions` rows `{image_url, user_id, caption}` as a JSON list, JSON lines or parquet.

The release has no image files; they are named by `--image-name` as for CC3M (fields `index` = the 0-based
position in the file, `url_name` = the last part of the Flickr URL, `stem` = the input's stem; default
`{index:09d}.jpg`). Ids are `<input stem>_<index:09d>`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .common import Context, Where, caption_record, expand_inputs, image_name, read_json, read_jsonl


def convert_sbu(inputs: list[str | Path], ctx: Context) -> Iterator[dict[str, Any]]:
    ctx.unit = "captions"
    for path in expand_inputs(inputs, (".json", ".jsonl", ".parquet")):
        for index, url, caption in ctx.progress(_rows(path), desc=f"sbu {path.name}"):
            image = image_name(ctx.image_name, index=index, url=url, stem=path.stem)
            rec = caption_record(f"{path.stem}_{index:09d}", image, caption, ctx)
            if rec is not None:
                yield rec


def _rows(path: Path) -> Iterator[tuple[int, str, str]]:
    """Yield (index, image url, caption) from any of the accepted layouts."""
    if path.suffix == ".parquet":
        yield from _records(path, _parquet_rows(path))
    elif path.suffix == ".jsonl":
        yield from _records(path, read_jsonl(path))
    else:
        data = read_json(path)
        if isinstance(data, dict):
            yield from _parallel_lists(path, data)
        elif isinstance(data, list):
            yield from _records(path, enumerate(data))
        else:
            raise Where(path).error(f"expected an object of lists or a list of records, got {type(data).__name__}")


def _parallel_lists(path: Path, data: dict[str, Any]) -> Iterator[tuple[int, str, str]]:
    where = Where(path)
    urls = where.get(data, "image_urls", list)
    captions = where.get(data, "captions", list)
    if len(urls) != len(captions):
        raise where.error(f"has {len(captions)} entries but image_urls has {len(urls)}", "captions")
    for index, (url, caption) in enumerate(zip(urls, captions, strict=True)):
        for name, value in (("image_urls", url), ("captions", caption)):
            if not isinstance(value, str):
                raise where.at(index).error(f"expected a string, got {type(value).__name__}", name)
        yield index, url, caption


def _records(path: Path, rows: Iterator[tuple[int, Any]]) -> Iterator[tuple[int, str, str]]:
    for index, row in rows:
        where = Where(path, index)
        yield index, where.get(row, "image_url", str), where.get(row, "caption", str)


def _parquet_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:
        raise Where(path).error(f"not a readable parquet file: {e}") from e
    for column in ("image_url", "caption"):
        if column not in pf.schema_arrow.names:
            raise Where(path).error(f"missing column (columns are {pf.schema_arrow.names})", column)
    index = 0
    for batch in pf.iter_batches(columns=["image_url", "caption"], batch_size=65536):
        for row in batch.to_pylist():
            yield index, row
            index += 1
