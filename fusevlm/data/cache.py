"""Datasets tokenized once into a memory-mapped cache, opened in a moment by every later run, rank and resume.

A dataset file is read in chunks (``records.plan_chunks``) by ``datasets.Dataset.map(num_proc=...)``: each chunk's
records are validated (the reader's checks, images as paths only: no file is opened), rendered by the chat template
and tokenized in one batch, and written as Arrow rows: token ids and labels (``<image>`` not yet expanded), the
length the model will see, the image references, and for a bad record its error. The folder is keyed by what the
tokens depend on - the file's identity (path, size, mtime, inode: nothing is read to key it), ``image_root``, the
tokenizer, the chat template, ``model_max_length``, the image token and its length - so a change to any of them
builds a new cache and the same inputs reuse it. ``on_bad_sample`` is applied when the cache is opened: the
errors are in it, so reports and counts are the same from a cache as from a fresh build.

One process builds while the others wait (a file lock beside the folder: ranks on a node share it); the rest
open the Arrow files memory-mapped, so start-up and memory do not grow with the number of records.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DataError
from .records import Chunk, _row_to_record, plan_chunks, read_chunk

logger = logging.getLogger(__name__)

CACHE_VERSION = 1
CACHE_ENV = "FUSEVLM_CACHE"
META_FILE = "meta.json"
# Rows per Arrow record batch: opening a cache reads every batch header, and the pages the OS reads around each
# one count in RSS, so few large batches keep start-up memory flat.
WRITER_BATCH_ROWS = 65536
READER, TOKENIZER = "reader", "tokenizer"


def cache_root(configured: str | os.PathLike | None = None) -> Path:
    """The recipe's ``data_cache_dir``, else ``$FUSEVLM_CACHE``, else ``~/.cache/fusevlm``."""
    if configured:
        return Path(configured)
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path.home() / ".cache" / "fusevlm"


def _schema() -> Any:
    import pyarrow as pa

    strings = pa.list_(pa.string())
    return pa.schema([
        ("part", pa.int16()),  # which file of the dataset (a Parquet folder's shard); meta["parts"]
        ("index", pa.int64()),  # the record's index in its file
        ("line", pa.int64()),
        ("id", pa.string()),
        ("task", pa.string()),  # the record's own task, if it names one
        ("input_ids", pa.list_(pa.int32())),  # <image> as one token; expanded when the sample is loaded
        ("labels", pa.list_(pa.int32())),
        ("length", pa.int32()),  # tokens the model sees (images expanded, after truncation)
        ("num_images", pa.int16()),
        ("truncated", pa.bool_()),
        ("image_paths", strings),  # as written in the record (None for bytes)
        ("image_fields", strings),
        ("image_labels", strings),
        ("image_bytes", pa.list_(pa.binary())),  # None for paths
        ("valid", pa.bool_()),  # passed the reader's checks (it may still fail to tokenize)
        ("error", pa.string()),  # JSON of the record's DataError, else null
    ])


# ---- building ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EncodeSpec:
    """Everything the cached rows depend on besides the file itself."""

    image_root: str
    chat_template: str | None
    model_max_length: int


def _error_json(err: DataError, stage: str) -> str:
    return json.dumps({"detail": err.detail, **err.location(), "stage": stage})


def encode_chunk(batch: dict[str, list], *, processor: Any, spec: EncodeSpec, parts: list[str]) -> Any:
    """``Dataset.map`` function (batched, one chunk per call): a chunk's records as cache rows (a pyarrow Table).

    The garbage collector is paused meanwhile: a chunk allocates a few dozen small objects per record, none in
    reference cycles, and the collector's passes over them cost a third of the time.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        return _encode_chunk(batch, processor, spec, parts)
    finally:
        if enabled:
            gc.enable()


def _encode_chunk(batch: dict[str, list], processor: Any, spec: EncodeSpec, parts: list[str]) -> Any:
    import pyarrow as pa

    rows: dict[str, list] = {name: [] for name in _schema().names}
    pending: list[tuple[int, Any]] = []  # (row position, record) of records that passed the reader
    root = Path(spec.image_root)
    for values in zip(*batch.values(), strict=True):
        chunk = Chunk(**dict(zip(batch.keys(), values, strict=True)))
        for raw in read_chunk(chunk):
            position = len(rows["index"])
            rows["part"].append(parts.index(raw.source))
            rows["index"].append(raw.index)
            rows["line"].append(raw.line)
            try:
                record = _row_to_record(raw, root, None, require_answer=True, check_files=False)
            except DataError as err:
                rows["id"].append(err.record_id)
                rows["task"].append(None)
                _images(rows, [])
                rows["valid"].append(False)
                rows["error"].append(_error_json(err, READER))
                continue
            rows["id"].append(record.id)
            rows["task"].append(record.task)
            _images(rows, record.images)
            rows["valid"].append(True)
            rows["error"].append(None)
            pending.append((position, record))
    ids: list[np.ndarray] = [np.zeros(0, np.int32)] * len(rows["index"])
    labels = list(ids)
    rows["length"] = [0] * len(ids)
    rows["truncated"] = [False] * len(ids)
    results = processor.tokenize_chats([record.messages for _, record in pending], chat_template=spec.chat_template)
    for (position, record), result in zip(pending, results, strict=True):
        try:
            ids[position], labels[position], rows["length"][position], rows["truncated"][position] = _fit(
                result, record, processor, spec.model_max_length
            )
        except DataError as err:
            rows["error"][position] = _error_json(err, TOKENIZER)
    rows["input_ids"] = _list_array(ids)
    rows["labels"] = _list_array(labels)
    return pa.Table.from_pydict(rows, schema=_schema())


def _images(rows: dict[str, list], images: list[Any]) -> None:
    rows["num_images"].append(len(images))
    rows["image_paths"].append([image.label if image.data is None else None for image in images])
    rows["image_fields"].append([image.record_field for image in images])
    rows["image_labels"].append([image.label for image in images])
    rows["image_bytes"].append([image.data for image in images])


def _list_array(arrays: list[np.ndarray]) -> Any:
    import pyarrow as pa

    offsets = np.zeros(len(arrays) + 1, dtype=np.int32)
    np.cumsum([len(a) for a in arrays], out=offsets[1:])
    values = np.concatenate(arrays) if arrays else np.zeros(0, np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values.astype(np.int32, copy=False)))


def _fit(result: Any, record: Any, processor: Any, limit: int) -> tuple[np.ndarray, np.ndarray, int, bool]:
    """Token ids and labels of one record within ``model_max_length`` (ids, labels, length the model sees,
    truncated?), or the DataError that makes it bad.

    A conversation longer than the limit whose images all fit is truncated (text only), as LLaVA does; one that
    would lose part of an image, or every trained token, is a bad sample.
    """
    where = {"source": record.source, "index": record.index, "record_id": record.id, "field": "conversations"}
    if isinstance(result, Exception):
        raise DataError(str(result), reason="template", **where) from result
    ids, labels = result
    is_image = ids == processor.image_token_id
    images = int(is_image.sum())
    length = len(ids) + images * (processor.image_seq_length - 1)
    truncated = length > limit
    if truncated:
        expanded_ids, _ = processor.expand_image_tokens_ids(ids, labels)
        if (expanded_ids[limit:] == processor.image_token_id).any():
            raise DataError(f"{length} tokens; model_max_length {limit} would cut an image span",
                            reason="too_long", **where)
        # Every image lies before the cut, so in the stored (unexpanded) tokens it falls at a text position.
        keep = limit - images * (processor.image_seq_length - 1)
        ids, labels, is_image, length = ids[:keep], labels[:keep], is_image[:keep], limit
    if not ((labels != -100) & ~is_image).any():
        raise DataError("no assistant tokens left to train (after truncation to model_max_length)",
                        reason="no_labels", **where)
    return ids, labels, length, truncated


# ---- the cache folder -------------------------------------------------------------------------------------------
def tokenizer_fingerprint(processor: Any) -> str:
    """A hash of the tokenizer's full definition (vocab, merges, added tokens, normalizer) and special tokens."""
    tokenizer = processor.tokenizer
    digest = hashlib.sha256(type(tokenizer).__name__.encode())
    digest.update(tokenizer.backend_tokenizer.to_str().encode())
    digest.update(json.dumps(tokenizer.special_tokens_map, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def file_identity(path: Path) -> dict[str, Any]:
    """Path, size, mtime and inode of a file, or of every file in a folder: cheap, and any rewrite changes it."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    identity = []
    for file in files:
        stat = file.stat()
        identity.append([str(file.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ino])
    return {"files": identity}


def cache_key(path: Path, spec: EncodeSpec, processor: Any) -> str:
    key = {
        "version": CACHE_VERSION,
        "file": file_identity(path),
        "spec": asdict(spec),
        "tokenizer": tokenizer_fingerprint(processor),
        "image_token": [processor.image_token, processor.image_token_id, processor.image_seq_length],
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]


@dataclass
class EncodedFile:
    """One dataset file's cache: its rows memory-mapped (``dataset``) and what the build counted (``meta``)."""

    source: str
    folder: Path
    dataset: Any  # datasets.Dataset over the cache's Arrow files
    meta: dict[str, Any]

    @property
    def image_root(self) -> str:
        return self.meta["image_root"]

    @property
    def parts(self) -> list[str]:
        return self.meta["parts"]

    @property
    def table(self) -> Any:
        return self.dataset.data.table

    def column(self, name: str) -> Any:
        return self.table.column(name)

    def usable_rows(self) -> np.ndarray:
        """Rows that passed every check (reader, duplicates, tokenizer): the samples to train on."""
        import pyarrow.compute as pc

        good = pc.is_null(self.column("error")).to_numpy(zero_copy_only=False)
        duplicates = [row for row, _ in self.meta["duplicates"]]
        good[duplicates] = False
        return np.flatnonzero(good).astype(np.int32 if len(good) < 2**31 else np.int64)

    def errors(self) -> tuple[list[tuple[int, DataError]], list[tuple[int, DataError]]]:
        """The bad records as (row, error) in file order: (reader errors and duplicate ids, tokenizer errors)."""
        import pyarrow.compute as pc

        column = self.column("error")
        bad = np.flatnonzero(pc.is_valid(column).to_numpy(zero_copy_only=False))
        found: dict[str, list[tuple[int, DataError]]] = {READER: [], TOKENIZER: []}
        for row, text in zip(bad.tolist(), column.take(bad).to_pylist(), strict=True):
            values = json.loads(text)
            stage = values.pop("stage")
            found[stage].append((row, DataError(values.pop("detail"), **values)))
        if self.meta["duplicates"]:
            rows = [row for row, _ in self.meta["duplicates"]]
            table = self.table.select(["part", "index", "line", "id"]).take(rows).to_pylist()
            for (row, first), values in zip(self.meta["duplicates"], table, strict=True):
                found[READER].append((row, DataError(
                    f"duplicate id, first used by record {first}", source=self.parts[values["part"]],
                    index=values["index"], record_id=values["id"], field="id", reason="duplicate_id",
                    line=values["line"],
                )))
        return tuple(sorted(found[stage], key=lambda pair: pair[0]) for stage in (READER, TOKENIZER))

    def row(self, row: int) -> dict[str, Any]:
        return self.table.slice(row, 1).to_pylist()[0]


def encode_file(
    path: str | os.PathLike,
    processor: Any,
    *,
    image_root: str | os.PathLike,
    chat_template: str | None,
    model_max_length: int,
    cache_dir: str | os.PathLike | None = None,
    num_proc: int | None = None,
) -> EncodedFile:
    """Open the cache of ``path`` for these settings, building it first if there is none.

    ``num_proc`` processes build it (default: the CPU count, at most one per chunk of the file).
    """
    from filelock import FileLock

    path = Path(path)
    spec = EncodeSpec(str(Path(image_root).resolve()), chat_template, model_max_length)
    root = cache_root(cache_dir) / "encoded"
    root.mkdir(parents=True, exist_ok=True)
    folder = root / cache_key(path, spec, processor)
    with FileLock(str(folder) + ".lock"):  # the other ranks of a node wait here, then open what it built
        if not (folder / META_FILE).is_file():
            _build(path, processor, spec, folder, num_proc)
    return _open(str(path), folder)


def _open(source: str, folder: Path) -> EncodedFile:
    import datasets

    meta = json.loads((folder / META_FILE).read_text())
    shards = [datasets.Dataset.from_file(str(folder / name)) for name in meta["shards"]]
    dataset = shards[0] if len(shards) == 1 else datasets.concatenate_datasets(shards)
    return EncodedFile(source=source, folder=folder, dataset=dataset, meta=meta)


def _build(path: Path, processor: Any, spec: EncodeSpec, folder: Path, num_proc: int | None) -> None:
    import datasets

    started = time.perf_counter()
    if folder.exists():
        shutil.rmtree(folder)  # a build that did not finish
    folder.mkdir(parents=True)
    chunks = plan_chunks(path)
    parts = list(dict.fromkeys(chunk.source for chunk in chunks)) or [str(path)]
    workers = max(1, min(num_proc or os.cpu_count() or 1, len(chunks)))
    if not chunks:  # an empty file: no records, one empty Arrow file
        shards = ["encoded.arrow"]
        _write_empty(folder / shards[0])
    else:
        logging.getLogger("datasets").setLevel(logging.WARNING)
        table = datasets.Dataset.from_list([asdict(chunk) for chunk in chunks])
        encoded = table.map(
            encode_chunk, batched=True, batch_size=1, remove_columns=table.column_names,
            num_proc=workers if workers > 1 else None,
            fn_kwargs={"processor": processor, "spec": spec, "parts": parts},
            features=datasets.Features.from_arrow_schema(_schema()), cache_file_name=str(folder / "encoded.arrow"),
            writer_batch_size=WRITER_BATCH_ROWS,
            new_fingerprint=folder.name, desc=f"tokenizing {path.name}",
        )
        shards = [Path(f["filename"]).name for f in encoded.cache_files]
        del encoded
    opened = _open(str(path), _write_meta(folder, {"shards": shards, "parts": parts, "image_root": spec.image_root,
                                                   "duplicates": []}))
    duplicates = _duplicate_ids(opened)
    valid = int(np.count_nonzero(opened.column("valid").to_numpy(zero_copy_only=False)))
    _write_meta(folder, {
        **opened.meta, "version": CACHE_VERSION, "source": str(path), "seen": len(opened.dataset),
        "reader_kept": valid - len(duplicates), "duplicates": duplicates, "num_proc": workers,
        "build_seconds": round(time.perf_counter() - started, 3),
    })
    logger.info("tokenized %s: %d records in %.1f s -> %s", path, len(opened.dataset), time.perf_counter() - started,
                folder)


def _write_empty(path: Path) -> None:
    import pyarrow as pa

    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, _schema()) as writer:
        writer.write_table(pa.Table.from_pylist([], schema=_schema()))


def _write_meta(folder: Path, meta: dict[str, Any]) -> Path:
    temporary = folder / (META_FILE + ".tmp")
    temporary.write_text(json.dumps(meta, indent=1) + "\n")
    temporary.replace(folder / META_FILE)
    return folder


def _duplicate_ids(encoded: EncodedFile) -> list[list[int]]:
    """[row, index of the first record with its id] for each later record of a part that reuses an id. Records
    the reader refused do not count (as when reading one by one: their ids were never registered)."""
    import pandas as pd

    table = encoded.table.select(["part", "index", "id", "valid"])
    valid = np.flatnonzero(table.column("valid").to_numpy(zero_copy_only=False))
    if not len(valid):
        return []
    parts = table.column("part").to_numpy()[valid]
    ids = table.column("id").take(valid).to_numpy(zero_copy_only=False)
    codes, _ = pd.factorize(pd.Series(ids).astype(str) + "\x00" + pd.Series(parts).astype(str))
    _, first = np.unique(codes, return_index=True)  # codes number the keys in order of first appearance
    repeated = np.flatnonzero(first[codes] != np.arange(len(codes)))
    if not len(repeated):
        return []
    indices = table.column("index").to_numpy()
    return [[int(valid[k]), int(indices[valid[first[codes[k]]]])] for k in repeated]
