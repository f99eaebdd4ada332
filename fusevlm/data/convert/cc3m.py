"""Conceptual Captions 3M -> caption conversations. Two input formats, told apart by the file suffix:

- `.tsv`: the official `Train_GCC-training.tsv` / `Validation_GCC-1.1.0-Validation.tsv`, no header, one image per
  line: `caption<TAB>url`. The release has no image files; whoever downloads them names them. The rule is
  `--image-name` (a `str.format` pattern with `index` = the 0-based line number, `url_name` = the last part of the
  URL path, `stem` = the TSV's file stem); the default `{index:09d}.jpg` gives `000000123.jpg` for line 123.
  LLaVA's CC3M-595K names them `GCC_train_{index:09d}.jpg`. Ids are `<tsv stem>_<index:09d>`.
- `.json` / `.jsonl`: LLaVA's pretraining files (`blip_laion_cc_sbu_558k.json`, CC3M-595K `chat.json`), a list of
  `{"id", "image", "conversations": [{"from": "human", ...}, {"from": "gpt", "value": caption}]}`. The caption
  (the first gpt turn) is kept with the record's id and image path; the instruction is drawn from our templates.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .common import Context, Where, caption_record, expand_inputs, image_name, read_json, read_jsonl


def convert_cc3m(inputs: list[str | Path], ctx: Context) -> Iterator[dict[str, Any]]:
    ctx.unit = "captions"
    for path in expand_inputs(inputs, (".tsv", ".json", ".jsonl")):
        if path.suffix == ".tsv":
            yield from _from_tsv(path, ctx)
        else:
            yield from _from_llava(path, ctx)


def _from_tsv(path: Path, ctx: Context) -> Iterator[dict[str, Any]]:
    with open(path, encoding="utf-8", newline="") as f:
        for index, line in enumerate(ctx.progress(f, desc=f"cc3m {path.name}")):
            columns = line.rstrip("\r\n").split("\t")
            if len(columns) != 2:
                raise Where(path, index).error(
                    f"expected 2 tab-separated columns (caption, url), got {len(columns)}", "url")
            caption, url = columns
            image = image_name(ctx.image_name, index=index, url=url, stem=path.stem)
            rec = caption_record(f"{path.stem}_{index:09d}", image, caption, ctx)
            if rec is not None:
                yield rec


def _llava_rows(path: Path) -> Iterator[tuple[int, Any]]:
    if path.suffix == ".jsonl":
        yield from read_jsonl(path)
        return
    data = read_json(path)
    if not isinstance(data, list):
        raise Where(path).error(f"expected a list of records, got {type(data).__name__}")
    yield from enumerate(data)


def _from_llava(path: Path, ctx: Context) -> Iterator[dict[str, Any]]:
    for index, row in ctx.progress(_llava_rows(path), desc=f"cc3m {path.name}"):
        where = Where(path, index)
        id = where.get(row, "id", (str, int))
        image = where.get(row, "image", str)
        turns = where.get(row, "conversations", list)
        captions = [t.get("value") for t in turns if isinstance(t, dict) and t.get("from") == "gpt"]
        if not captions:
            raise where.error("has no turn from gpt (the caption)", "conversations")
        if not isinstance(captions[0], str):
            raise where.error(f"the gpt turn's value is {type(captions[0]).__name__}, not a string",
                              "conversations")
        rec = caption_record(str(id), image, captions[0], ctx)
        if rec is not None:
            yield rec
