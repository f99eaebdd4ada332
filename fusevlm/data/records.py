"""Read LLaVA-style datasets into validated records, and count what was skipped.

Formats (chosen by the path):

- ``*.json``: a JSON list of LLaVA conversation objects;
- ``*.jsonl``: one such object per line (blank lines are ignored; ``Record.index`` is the line number - 1);
- ``*.parquet``, or a folder of ``*.parquet`` shards: the same columns, images as bytes;
- a folder written by ``datasets.Dataset.save_to_disk`` (for a ``DatasetDict`` point at one split's folder).

A record object has ``id`` (string or int; missing -> ``"#<index>"``), ``image`` (or ``images``; optional) and
``conversations``. ``image`` is a path string, encoded bytes, a Hugging Face ``Image`` struct
``{"bytes": ..., "path": ...}``, or a list of those. ``conversations`` is a list (or a JSON string) of
``{"from": "human"|"gpt"|"system"|"user"|"assistant", "value": str}`` (``role``/``content`` also accepted).

Checks (each failure is a ``DataError`` naming file, record index and id, and field): types, a missing
``conversations``, roles (optional system first, then user/assistant alternating, ending on assistant when
``require_answer``), empty user/assistant turns, ``<image>`` outside user turns, ``<image>`` count against the
images, text that is not valid UTF-8, image paths escaping ``image_root``, missing image files, duplicate ids in a
file.

LLaVA convention, applied here: a record with exactly one image and no ``<image>`` placeholder gets ``"<image>\\n"``
prepended to its first user turn (LLaVA's pretraining captions and many converters omit it). Any other mismatch
between placeholders and images is an error.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fusevlm.data.errors import DataError
from fusevlm.data.images import ImageRef
from fusevlm.data.report import BadSampleReport

logger = logging.getLogger(__name__)

IMAGE_PLACEHOLDER = "<image>"
ON_BAD_SAMPLE = ("error", "skip")
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
_PARQUET_BATCH = 1024


@dataclass
class Record:
    source: str  # the file (or dataset folder) it came from
    index: int  # 0-based record index (line number - 1 for JSONL)
    id: str
    images: list[ImageRef]  # in the order of the <image> placeholders
    messages: list[
        dict
    ]  # [{"role": "system"|"user"|"assistant", "content": str}], "<image>" kept in the text
    task: str | None = None


# --------------------------------------------------------------------------------------------------------------
# Reader entry point
# --------------------------------------------------------------------------------------------------------------


def read_records(
    path: str | os.PathLike,
    image_root: str | os.PathLike | None = None,
    on_bad_sample: str = "error",
    report: BadSampleReport | None = None,
    task: str | None = None,
    *,
    require_answer: bool = True,
    check_files: bool = True,
) -> list[Record]:
    """Read and validate every record of one dataset.

    ``image_root`` defaults to the data file's folder (the dataset folder for Parquet shards / HF datasets).
    ``on_bad_sample="error"`` raises the first ``DataError``; ``"skip"`` drops the record and counts it in
    ``report`` (logged as a warning when no report is given). A file that cannot be read as a whole is always an
    error, and so is a dataset whose every record is bad (a wrong ``image_root`` looks like that).
    ``require_answer=False`` allows conversations that end on a user turn (prompts for evaluation).
    ``check_files=False`` skips the existence check of image files (one ``stat`` per image).
    """
    if on_bad_sample not in ON_BAD_SAMPLE:
        raise ValueError(f"on_bad_sample must be one of {ON_BAD_SAMPLE}, got {on_bad_sample!r}")
    path = Path(path)
    dataset = str(path)
    root = _image_root(path, image_root)
    local_report = BadSampleReport()
    records: list[Record] = []
    first_index_of_id: dict[tuple[str, str], int] = {}
    seen = 0
    for row in _iter_rows(path):
        seen += 1
        try:
            record = _row_to_record(row, root, task, require_answer=require_answer, check_files=check_files)
            _check_unique_id(record, first_index_of_id)
        except DataError as err:
            if on_bad_sample == "error":
                raise
            local_report.add(dataset, err)
            continue
        records.append(record)
    local_report.add_read(dataset, seen=seen, kept=len(records))
    _finish_report(local_report, report)
    if seen and not records:
        raise DataError(
            f"all {seen} records are bad\n{local_report.summary()}", source=dataset, reason="all_bad"
        )
    return records


def _finish_report(local: BadSampleReport, report: BadSampleReport | None) -> None:
    if report is not None:
        report.merge(local)
    elif local.skipped:
        logger.warning("%s", local.summary())


def _image_root(path: Path, image_root: str | os.PathLike | None) -> Path:
    if image_root is None:
        return path if path.is_dir() else path.parent
    root = Path(image_root)
    if not root.is_dir():
        raise DataError(
            f"image_root {str(root)!r} is not a folder", source=str(path), reason="missing_image_root"
        )
    return root


def _check_unique_id(record: Record, first_index_of_id: dict[tuple[str, str], int]) -> None:
    key = (record.source, record.id)
    if key in first_index_of_id:
        raise DataError(
            f"duplicate id, first used by record {first_index_of_id[key]}",
            source=record.source,
            index=record.index,
            record_id=record.id,
            field="id",
            reason="duplicate_id",
        )
    first_index_of_id[key] = record.index


# --------------------------------------------------------------------------------------------------------------
# Raw rows, per format, in chunks: a chunk is read on its own, so a large file is read by several processes
# --------------------------------------------------------------------------------------------------------------


@dataclass
class _Row:
    """One raw record before validation: a parsed object, or the DataError that parsing it raised."""

    source: str
    index: int
    value: Any
    line: int | None = None
    error: DataError | None = None


@dataclass(frozen=True)
class Chunk:
    """A slice of one dataset that can be read without the rest: its rows are numbered from ``first_index``.

    ``start``/``end`` are byte offsets (``json``: whole array elements; ``jsonl``: whole lines, the first being
    line ``first_line``), a Parquet row group (``start``) or a row range of a saved dataset. ``source`` is what
    its records name: the file, or the Parquet shard of a folder (a shard's records are numbered from 0).
    """

    kind: str
    source: str
    first_index: int
    start: int
    end: int
    first_line: int = 1


JSONL_CHUNK_BYTES = 4 << 20
JSON_CHUNK_RECORDS = 8192
HF_CHUNK_ROWS = 8192


def plan_chunks(path: str | os.PathLike) -> list[Chunk]:
    """Split a dataset into chunks. Whole-file problems (unreadable, not a JSON list, ...) raise here."""
    path = Path(path)
    if path.is_dir():
        return _plan_folder(path)
    if not path.exists():
        raise DataError("data file not found", source=str(path), reason="missing_file")
    if path.suffix == ".json":
        return _plan_json(path)
    if path.suffix == ".jsonl":
        return _plan_jsonl(path)
    if path.suffix == ".parquet":
        return _plan_parquet(path)
    raise DataError(
        "unknown data format; expected .json, .jsonl, .parquet or a dataset folder",
        source=str(path),
        reason="unknown_format",
    )


def read_chunk(chunk: Chunk) -> Iterator[_Row]:
    readers = {"json": _rows_json, "jsonl": _rows_jsonl, "parquet": _rows_parquet, "hf": _rows_hf_dataset}
    return readers[chunk.kind](chunk)


def _iter_rows(path: Path) -> Iterator[_Row]:
    for chunk in plan_chunks(path):
        yield from read_chunk(chunk)


# -- JSON: a list parsed element by element, so memory holds one record's objects at a time ----------------------
_DECODER = json.JSONDecoder()
_WHITESPACE = re.compile(r"[ \t\n\r]*")


def _plan_json(path: Path) -> list[Chunk]:
    # One bad byte or bracket makes a JSON list unreadable as a whole: always an error, raised before any record.
    data = path.read_bytes()
    bom = 3 if data.startswith(b"\xef\xbb\xbf") else 0
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise DataError(
            f"file is not valid UTF-8 (byte {err.start})", source=str(path), line=line, reason="not_utf8"
        ) from None
    del data
    pos = _WHITESPACE.match(text, 0).end()
    if not text.startswith("[", pos):
        items = _json_or_error(lambda: json.loads(text), path)
        raise DataError(
            f"expected a JSON list of records, got {type(items).__name__}", source=str(path), reason="bad_type"
        )
    starts = _json_or_error(lambda: list(_array_elements(text, pos + 1, whole=True, every=JSON_CHUNK_RECORDS)), path)
    ascii_only = text.isascii()

    def offset(char: int) -> int:
        return bom + (char if ascii_only else len(text[:char].encode("utf-8")))

    ends = [*starts[1:], None]
    chunks = []
    for k, (start, end) in enumerate(zip(starts, ends, strict=True)):
        end_byte = bom + len(text.encode("utf-8")) if end is None else offset(end)
        chunks.append(Chunk("json", str(path), k * JSON_CHUNK_RECORDS, offset(start), end_byte))
    return chunks


def _json_or_error(parse: Any, path: Path) -> Any:
    try:
        return parse()
    except json.JSONDecodeError as err:
        raise DataError(
            f"malformed JSON: {err.msg} (column {err.colno})", source=str(path), line=err.lineno, reason="bad_json"
        ) from None


def _array_elements(text: str, pos: int, *, whole: bool, every: int = 1) -> Iterator[Any]:
    """The elements of a JSON array from ``pos`` (just past ``[`` or a ``,``); with ``every`` > 1, only the start
    offset of every ``every``-th element. ``whole``: the text is the entire file, so the array must close and
    nothing may follow; otherwise the text is a chunk that ends after an element's comma or the closing bracket."""
    count = 0
    pos = _WHITESPACE.match(text, pos).end()
    if whole and text.startswith("]", pos):
        pos += 1
    else:
        while pos < len(text):
            start = pos
            value, pos = _DECODER.raw_decode(text, pos)
            if every == 1:
                yield value
            elif count % every == 0:
                yield start
            count += 1
            pos = _WHITESPACE.match(text, pos).end()
            if text.startswith(",", pos):
                pos = _WHITESPACE.match(text, pos + 1).end()
                continue
            if text.startswith("]", pos):
                pos += 1
                break
            raise json.JSONDecodeError("Expecting ',' delimiter", text, pos)
        else:
            if whole:
                raise json.JSONDecodeError("Expecting value", text, pos)
    if whole and _WHITESPACE.match(text, pos).end() != len(text):
        raise json.JSONDecodeError("Extra data", text, pos)


def _read_range(path: str, start: int, end: int) -> bytes:
    with open(path, "rb") as handle:
        handle.seek(start)
        return handle.read(end - start)


def _rows_json(chunk: Chunk) -> Iterator[_Row]:
    text = _read_range(chunk.source, chunk.start, chunk.end).decode("utf-8")
    for k, item in enumerate(_array_elements(text, 0, whole=False)):
        yield _Row(chunk.source, chunk.first_index + k, item)


# -- JSONL: lines are independent, so a bad line is a bad record (skippable), named by its line number -----------
def _plan_jsonl(path: Path) -> list[Chunk]:
    chunks, start, line = [], 0, 1
    with path.open("rb") as handle:
        while block := handle.read(JSONL_CHUNK_BYTES):
            block += handle.readline()  # a chunk ends with a whole line
            chunks.append(Chunk("jsonl", str(path), line - 1, start, start + len(block), first_line=line))
            line += block.count(b"\n")
            start += len(block)
    return chunks


def _rows_jsonl(chunk: Chunk) -> Iterator[_Row]:
    lines = _read_range(chunk.source, chunk.start, chunk.end).split(b"\n")
    if lines and not lines[-1]:
        lines.pop()  # the chunk's last newline
    for k, raw in enumerate(lines):
        if raw.strip():
            yield _parse_jsonl_line(raw, chunk.source, chunk.first_line + k)


def _parse_jsonl_line(raw: bytes, source: str, line_no: int) -> _Row:
    row = _Row(source, line_no - 1, None, line=line_no)
    try:
        text = raw.decode("utf-8-sig" if line_no == 1 else "utf-8")
    except UnicodeDecodeError as err:
        row.error = DataError(f"line is not valid UTF-8 (byte {err.start} of the line)", reason="not_utf8")
        return row
    try:
        row.value = json.loads(text)
    except json.JSONDecodeError as err:
        row.error = DataError(f"malformed JSON: {err.msg} (column {err.colno})", reason="bad_json")
    return row


# -- Parquet: one chunk per row group --------------------------------------------------------------------------
def _plan_parquet(path: Path) -> list[Chunk]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        metadata = pq.ParquetFile(path).metadata
    except (pa.ArrowException, OSError) as err:
        raise DataError(f"cannot read Parquet file: {err}", source=str(path), reason="bad_file") from None
    chunks, index = [], 0
    for group in range(metadata.num_row_groups):
        rows = metadata.row_group(group).num_rows
        chunks.append(Chunk("parquet", str(path), index, group, group + 1))
        index += rows
    return chunks


def _rows_parquet(chunk: Chunk) -> Iterator[_Row]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(chunk.source).read_row_group(chunk.start)
        for offset in range(0, table.num_rows, _PARQUET_BATCH):
            for k, value in enumerate(table.slice(offset, _PARQUET_BATCH).to_pylist()):
                yield _Row(chunk.source, chunk.first_index + offset + k, value)
    except (pa.ArrowException, OSError) as err:
        raise DataError(f"cannot read Parquet file: {err}", source=chunk.source, reason="bad_file") from None


# -- folders: Parquet shards, or a saved Hugging Face dataset ----------------------------------------------------
def _plan_folder(path: Path) -> list[Chunk]:
    if (path / "dataset_dict.json").exists():
        splits = sorted(child.name for child in path.iterdir() if child.is_dir())
        raise DataError(
            f"this is a DatasetDict; point the path at one split's folder (splits: {', '.join(splits)})",
            source=str(path),
            reason="bad_file",
        )
    if (path / "state.json").exists():
        rows = len(_load_hf_dataset(str(path)))
        return [Chunk("hf", str(path), start, start, min(start + HF_CHUNK_ROWS, rows))
                for start in range(0, rows, HF_CHUNK_ROWS)]
    shards = sorted(path.glob("*.parquet"))
    if not shards:
        raise DataError(
            "folder holds neither a saved Hugging Face dataset nor *.parquet files",
            source=str(path),
            reason="bad_file",
        )
    return [chunk for shard in shards for chunk in _plan_parquet(shard)]


_HF_DATASETS: dict[str, Any] = {}


def _load_hf_dataset(path: str) -> Any:
    # Opened once per process (memory-mapped); every chunk of the folder reads from it.
    if path not in _HF_DATASETS:
        import datasets

        try:
            _HF_DATASETS[path] = datasets.load_from_disk(path)
        except Exception as err:  # datasets raises many types for a damaged folder; all mean "cannot read"
            raise DataError(f"cannot load dataset folder: {err}", source=path, reason="bad_file") from None
    return _HF_DATASETS[path]


def _rows_hf_dataset(chunk: Chunk) -> Iterator[_Row]:
    # The arrow format gives raw values: image columns stay {"bytes", "path"} structs instead of decoded PIL
    # images, so the images go through load_image like any other.
    table = _load_hf_dataset(chunk.source).with_format("arrow")[chunk.start : chunk.end]
    for offset in range(0, table.num_rows, _PARQUET_BATCH):
        for k, value in enumerate(table.slice(offset, _PARQUET_BATCH).to_pylist()):
            yield _Row(chunk.source, chunk.start + offset + k, value)

# --------------------------------------------------------------------------------------------------------------
# One record: fields and checks
# --------------------------------------------------------------------------------------------------------------


def _row_to_record(
    row: _Row, root: Path, task: str | None, *, require_answer: bool, check_files: bool
) -> Record:
    record_id = None
    try:
        if row.error is not None:
            raise row.error
        raw = row.value
        if not isinstance(raw, dict):
            raise DataError(f"expected an object, got {type(raw).__name__}", reason="bad_type")
        record_id = _parse_id(raw.get("id"), row.index)
        images = _parse_images(raw, root, f"{row.source}[{row.index}]", check_files=check_files)
        messages = _parse_conversations(raw, require_answer=require_answer)
        messages = _match_placeholders(messages, len(images))
    except DataError as err:
        raise err.located(source=row.source, index=row.index, record_id=record_id, line=row.line) from None
    # A record may name its own task (mixtures of tasks in one file); the caller's task wins.
    own_task = raw.get("task") if isinstance(raw.get("task"), str) else None
    return Record(
        source=row.source, index=row.index, id=record_id, images=images, messages=messages,
        task=task if task is not None else own_task,
    )


def _parse_id(value: Any, index: int) -> str:
    if value is None:
        return f"#{index}"
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, str):
        _check_utf8(value, "id")
        return value
    raise DataError(f"expected a string or int, got {type(value).__name__}", field="id", reason="bad_type")


def _check_utf8(text: str, field_name: str) -> None:
    # JSON escapes can produce lone surrogates ("\ud800"): valid JSON, but not text any tokenizer can encode.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise DataError(
            f"text is not valid UTF-8 ({err.reason} at character {err.start})",
            field=field_name,
            reason="not_utf8",
        ) from None


# -- images ----------------------------------------------------------------------------------------------------


def _parse_images(raw: dict, root: Path, label_prefix: str, *, check_files: bool) -> list[ImageRef]:
    if "image" in raw and "images" in raw:
        raise DataError("has both 'image' and 'images'", field="image", reason="bad_type")
    key = "image" if "image" in raw else "images"
    value = raw.get(key)
    if value is None:
        return []  # a text-only record
    if isinstance(value, list):
        return [
            _parse_image(item, f"{key}[{k}]", root, label_prefix, check_files=check_files)
            for k, item in enumerate(value)
        ]
    return [_parse_image(value, key, root, label_prefix, check_files=check_files)]


def _parse_image(item: Any, field_name: str, root: Path, label_prefix: str, *, check_files: bool) -> ImageRef:
    if isinstance(item, str):
        return _path_ref(item, field_name, root, check_files=check_files)
    if isinstance(item, (bytes, bytearray)):
        return _bytes_ref(bytes(item), field_name, f"{label_prefix}.{field_name}")
    if isinstance(item, dict) and set(item) <= {"bytes", "path"}:
        return _struct_ref(item, field_name, root, label_prefix, check_files=check_files)
    raise DataError(
        f"expected a path, bytes or a {{'bytes', 'path'}} struct, got {type(item).__name__}",
        field=field_name,
        reason="bad_type",
    )


def _struct_ref(item: dict, field_name: str, root: Path, label_prefix: str, *, check_files: bool) -> ImageRef:
    """A Hugging Face ``Image`` value: bytes win when present (the path is then only a name)."""
    data, path = item.get("bytes"), item.get("path")
    if data is not None:
        if not isinstance(data, (bytes, bytearray)):
            raise DataError(f"'bytes' is {type(data).__name__}", field=field_name, reason="bad_type")
        label = f"{label_prefix}.{field_name}" + (f" ({path})" if isinstance(path, str) else "")
        return _bytes_ref(bytes(data), field_name, label)
    if isinstance(path, str):
        return _path_ref(path, field_name, root, check_files=check_files)
    raise DataError("image struct has neither bytes nor a path", field=field_name, reason="bad_type")


def _bytes_ref(data: bytes, field_name: str, label: str) -> ImageRef:
    if not data:
        raise DataError("image bytes are empty", field=field_name, reason="bad_image")
    return ImageRef.from_bytes(data, label=label, record_field=field_name)


def _path_ref(raw_path: str, field_name: str, root: Path, *, check_files: bool) -> ImageRef:
    """``check_files=False`` touches no file: the path is checked against the root as text (``..``, absolute paths
    elsewhere), and ``image_path_ref`` does the full check (symlinks, existence) when the sample is loaded."""
    _check_utf8(raw_path, field_name)
    if not check_files:
        return ImageRef.from_path(_lexical_image_path(raw_path, root, field_name), label=raw_path, record_field=field_name)
    resolved = resolve_image_path(raw_path, root, field_name=field_name)
    if not resolved.is_file():
        raise DataError(
            f"image file not found: {raw_path!r} (under {str(root)!r})",
            field=field_name,
            reason="missing_image",
        )
    return ImageRef.from_path(resolved, label=raw_path, record_field=field_name)


def image_path_ref(raw_path: str, field_name: str, root: str | os.PathLike) -> ImageRef:
    """The reader's full check of one image path (inside ``root`` after symlinks, an existing file), for a sample
    whose path was checked only as text when its dataset was read; raises the reader's ``DataError``."""
    return _path_ref(raw_path, field_name, Path(root), check_files=True)


def _lexical_image_path(raw_path: str, root: Path, field_name: str) -> Path:
    if not raw_path:
        raise DataError("image path is empty", field=field_name, reason="bad_type")
    if "\x00" in raw_path:
        raise DataError(f"bad image path {raw_path!r}: embedded null byte", field=field_name, reason="bad_path")
    base = _resolved_root(root)
    joined = os.path.normpath(os.path.join(base, raw_path))  # strings: pathlib costs more than the rest of a record
    if joined != base and not joined.startswith(base.rstrip(os.sep) + os.sep):
        raise DataError(
            f"image path {raw_path!r} resolves to {joined!r}, outside image_root {base!r}",
            field=field_name,
            reason="path_escape",
        )
    return Path(joined)


_RESOLVED_ROOTS: dict[Path, str] = {}


def _resolved_root(root: Path) -> str:
    # One realpath per image root, not per image (millions of records share a handful of roots).
    if root not in _RESOLVED_ROOTS:
        _RESOLVED_ROOTS[root] = str(root.resolve())
    return _RESOLVED_ROOTS[root]


def resolve_image_path(raw_path: str, image_root: str | os.PathLike, *, field_name: str = "image") -> Path:
    """The real path of ``raw_path`` under ``image_root``; a ``DataError`` if it leaves the root.

    Relative paths are joined to the root; absolute paths are allowed only inside it. Symlinks are followed
    before the check, so a link inside the root that points outside is refused too (set ``image_root`` to a
    folder that holds the link targets to allow them).
    """
    if not raw_path:
        raise DataError("image path is empty", field=field_name, reason="bad_type")
    root = Path(image_root).resolve()
    candidate = Path(raw_path)
    if not candidate.is_absolute():
        candidate = root / candidate
    try:
        resolved = candidate.resolve()
    except (OSError, ValueError, RuntimeError) as err:  # a NUL byte, a symlink loop
        raise DataError(f"bad image path {raw_path!r}: {err}", field=field_name, reason="bad_path") from None
    if not resolved.is_relative_to(root):
        raise DataError(
            f"image path {raw_path!r} resolves to {str(resolved)!r}, outside image_root {str(root)!r}",
            field=field_name,
            reason="path_escape",
        )
    return resolved


# -- conversations ---------------------------------------------------------------------------------------------


def _parse_conversations(raw: dict, *, require_answer: bool) -> list[dict]:
    if "conversations" not in raw or raw["conversations"] is None:
        raise DataError("missing", field="conversations", reason="missing_field")
    turns = _decode_json_field(raw["conversations"], "conversations")
    if not isinstance(turns, list):
        raise DataError(
            f"expected a list of turns, got {type(turns).__name__}", field="conversations", reason="bad_type"
        )
    messages = [_parse_turn(turn, f"conversations[{k}]") for k, turn in enumerate(turns)]
    _check_turn_order(messages, require_answer=require_answer)
    _check_turn_text(messages)
    return messages


def _decode_json_field(value: Any, field_name: str) -> Any:
    """Parquet and HF datasets often store nested fields as JSON strings; decode those, pass others through."""
    if isinstance(value, (bytes, bytearray)):
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError as err:
            raise DataError(
                f"not valid UTF-8 (byte {err.start})", field=field_name, reason="not_utf8"
            ) from None
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError as err:
        raise DataError(f"malformed JSON string: {err.msg}", field=field_name, reason="bad_json") from None


def _parse_turn(turn: Any, field_name: str) -> dict:
    if not isinstance(turn, dict):
        raise DataError(f"expected an object, got {type(turn).__name__}", field=field_name, reason="bad_type")
    role_key = _pick_key(turn, "from", "role")
    text_key = _pick_key(turn, "value", "content")
    role, text = turn.get(role_key), turn.get(text_key)
    if not isinstance(role, str):
        raise DataError(
            f"expected a role string, got {type(role).__name__}",
            field=f"{field_name}.{role_key}",
            reason="bad_type",
        )
    if role not in ROLES:
        raise DataError(
            f"unknown role {role!r}; expected one of {sorted(ROLES)}",
            field=f"{field_name}.{role_key}",
            reason="bad_role",
        )
    if not isinstance(text, str):
        raise DataError(
            f"expected a string, got {type(text).__name__}",
            field=f"{field_name}.{text_key}",
            reason="bad_type",
        )
    _check_utf8(text, f"{field_name}.{text_key}")
    return {"role": ROLES[role], "content": text}


def _pick_key(turn: dict, llava_key: str, hf_key: str) -> str:
    # Arrow structs holding both spellings fill the absent one with None, so a None value does not count.
    if turn.get(llava_key) is None and turn.get(hf_key) is not None:
        return hf_key
    return llava_key


def _check_turn_order(messages: list[dict], *, require_answer: bool) -> None:
    """An optional system turn, then user/assistant alternating from a user turn; last is assistant if required."""
    if not messages:
        raise DataError("conversation has no turns", field="conversations", reason="turn_order")
    start = 1 if messages[0]["role"] == "system" else 0
    if start == len(messages):
        raise DataError("conversation has only a system turn", field="conversations", reason="turn_order")
    for k in range(start, len(messages)):
        expected = "user" if (k - start) % 2 == 0 else "assistant"
        if messages[k]["role"] != expected:
            raise DataError(
                f"expected a {expected} turn, got {messages[k]['role']} (an optional system turn, then user and "
                "assistant turns alternating, starting with user)",
                field=f"conversations[{k}]",
                reason="turn_order",
            )
    if require_answer and messages[-1]["role"] != "assistant":
        raise DataError(
            "conversation ends on a user turn; training needs an assistant answer last",
            field=f"conversations[{len(messages) - 1}]",
            reason="turn_order",
        )


def _check_turn_text(messages: list[dict]) -> None:
    for k, message in enumerate(messages):
        where = f"conversations[{k}].value"
        if message["role"] != "system" and not message["content"].strip():
            raise DataError(f"empty {message['role']} turn", field=where, reason="empty_turn")
        if message["role"] != "user" and IMAGE_PLACEHOLDER in message["content"]:
            raise DataError(
                f"{IMAGE_PLACEHOLDER} in a {message['role']} turn; images belong in user turns",
                field=where,
                reason="image_placeholder",
            )


def _match_placeholders(messages: list[dict], num_images: int) -> list[dict]:
    count = sum(message["content"].count(IMAGE_PLACEHOLDER) for message in messages)
    if count == num_images:
        return messages
    if num_images == 1 and count == 0:
        # LLaVA convention: a single image with no placeholder goes before the first user turn's text.
        first_user = next(k for k, message in enumerate(messages) if message["role"] == "user")
        messages[first_user] = {
            "role": "user",
            "content": f"{IMAGE_PLACEHOLDER}\n{messages[first_user]['content']}",
        }
        return messages
    raise DataError(
        f"{count} {IMAGE_PLACEHOLDER} placeholder(s) for {num_images} image(s)",
        field="conversations",
        reason="image_count",
    )
