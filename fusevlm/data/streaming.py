"""Streamed data: records read as they are trained on, never cached or counted up front (``streaming: true``).

A streamed entry is Parquet shards (a file or a folder of ``*.parquet``), WebDataset shards (a ``.tar`` or a folder
of them; ``write_webdataset`` makes them from a LLaVA file) or anything ``datasets.load_dataset(path,
streaming=True)`` reads. The raw rows come from ``datasets.IterableDataset``: entries are mixed with
``interleave_datasets`` (probabilities from their ``num_samples``), the mixture is split by rank with
``split_dataset_by_node`` and by DataLoader worker by ``datasets`` itself (shards to workers), so no sample is seen
twice in an epoch. Each row then goes through the reader's checks, the processor's tokenization and the image
loader, as a cached sample does. The position in the stream is ``datasets``' iterable state: torchdata's
``StatefulDataLoader`` collects it from the workers, the trainer saves it with each checkpoint and a resumed run
restores it, continuing at the exact next sample.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..processing import FuseVLMProcessor, pixel_values
from .cache import _fit
from .errors import DataError
from .images import apply_aspect, load_image, mean_color
from .records import _image_root, _iter_rows, _Row, _row_to_record, image_path_ref

IMAGE_FIELD_PREFIX = "image"  # WebDataset members <key>.image<k>.<ext>
SAVED_SHARDS = 64  # a saved dataset streams in this many shards, to share out among ranks and workers


def raw_stream(path: str | Path) -> tuple[Any, str]:
    """The rows of one streamed entry as a ``datasets.IterableDataset``, and its format: Parquet or WebDataset
    shards, a saved ``datasets`` folder, or any folder ``datasets.load_dataset`` reads (JSON Lines files, say)."""
    import datasets

    path = Path(path)
    files = sorted(path.glob("*.parquet")) or sorted(path.glob("*.tar")) if path.is_dir() else [path]
    if files and all(f.suffix == ".parquet" for f in files):
        return datasets.load_dataset("parquet", data_files=[str(f) for f in files], split="train",
                                     streaming=True), "parquet"
    if files and all(f.suffix == ".tar" for f in files):
        stream = datasets.load_dataset("webdataset", data_files=[str(f) for f in files], split="train",
                                       streaming=True)
        return stream.decode(False), "webdataset"  # images stay {"bytes", "path"}: our loader decodes them
    if (path / "state.json").is_file():  # a folder written by Dataset.save_to_disk, streamed in shards
        saved = datasets.load_from_disk(str(path))
        return saved.to_iterable_dataset(num_shards=min(SAVED_SHARDS, max(len(saved), 1))), "datasets"
    return datasets.load_dataset(str(path), split="train", streaming=True), "datasets"


def _webdataset_record(row: dict[str, Any]) -> dict[str, Any]:
    record = dict(row["json"])
    fields = sorted((k for k in row if k.startswith(IMAGE_FIELD_PREFIX) and row[k] is not None),
                    key=lambda k: int(k[len(IMAGE_FIELD_PREFIX):].split(".")[0]))
    if fields:
        record["images"] = [row[k] for k in fields]
    return record


class StreamingDataset(torch.utils.data.IterableDataset):
    """Samples of a streamed mixture: ``input_ids``, ``labels``, ``pixel_values``, ``task_id``, ``sample_id``."""

    def __init__(
        self,
        sources: Sequence[Any],
        processor: FuseVLMProcessor,
        *,
        model_max_length: int,
        chat_template: str | None = None,
        image_aspect_ratio: str = "pad",
        on_bad_sample: str = "error",
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        import datasets
        from datasets.distributed import split_dataset_by_node

        self.processor = processor
        self.model_max_length = model_max_length
        self.chat_template = chat_template
        self.image_aspect_ratio = image_aspect_ratio
        self.on_bad_sample = on_bad_sample
        self.background = mean_color(processor.image_processor.image_mean)
        streams, weights, tasks, self.names = [], [], [], []
        for position, source in enumerate(sources):
            stream, kind = raw_stream(source.path)
            tasks.append(source.task or Path(source.path).stem)
            self.names.append(str(source.path))
            root = str(_image_root(Path(source.path), source.image_root))
            stream = stream.map(_tag, fn_kwargs={"position": position, "kind": kind, "root": root}, with_indices=True)
            streams.append(stream.select_columns(["_fusevlm"]))
            weights.append(source.num_samples)
        if len(streams) == 1:
            mixed = streams[0]
        else:
            if any(w is None for w in weights):
                raise ValueError("streamed entries of a mixture need num_samples: their mixing weights")
            total = float(sum(weights))
            mixed = datasets.interleave_datasets(streams, probabilities=[w / total for w in weights], seed=seed,
                                                 stopping_strategy="all_exhausted")
        self.stream = split_dataset_by_node(mixed, rank=rank, world_size=world_size) if world_size > 1 else mixed
        self.tasks = list(dict.fromkeys(tasks))
        self.task_of = [self.tasks.index(task) for task in tasks]  # each entry's task id

    # ---- position (torchdata's Stateful protocol) ----------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return self.stream.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stream.load_state_dict(state)

    def set_epoch(self, epoch: int) -> None:
        self.stream.set_epoch(epoch)

    # ---- samples ---------------------------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[dict[str, Any]]:
        errors: list[dict[str, Any]] = []
        for row in self.stream:
            tag = json.loads(row["_fusevlm"]["meta"])
            try:
                item = self._sample(tag, row["_fusevlm"]["value"])
            except DataError as err:
                if self.on_bad_sample == "error":
                    raise
                errors.append({"dataset": self.names[tag["position"]], **err.to_dict()})
                continue
            item["data_errors"], errors = errors, []
            yield item

    def _sample(self, tag: dict[str, Any], value: Any) -> dict[str, Any]:
        source = self.names[tag["position"]]
        raw = _Row(tag.get("source") or source, tag["index"], decode_value(value))
        record = _row_to_record(raw, Path(tag["root"]), None, require_answer=True, check_files=False)
        (result,) = self.processor.tokenize_chats([record.messages], chat_template=self.chat_template)
        ids, labels, length, _ = _fit(result, record, self.processor, self.model_max_length)
        input_ids, labels = self.processor.expand_image_tokens_ids(ids, labels)
        images = []
        for position, ref in enumerate(record.images):
            try:
                if ref.data is None:
                    ref = image_path_ref(ref.label, ref.record_field, tag["root"])
                image = load_image(ref)
            except DataError as err:
                raise type(err)(err.detail, source=record.source, index=record.index, record_id=record.id,
                                field=err.field or f"image[{position}] ({ref.label})", reason=err.reason) from None
            images.append(apply_aspect(image, self.image_aspect_ratio, self.background))
        item = {"input_ids": torch.from_numpy(input_ids[:length]), "labels": torch.from_numpy(labels[:length]),
                "task_id": self.task_of[tag["position"]], "sample_id": record.id}
        if images:
            item["pixel_values"] = pixel_values(self.processor.image_processor, images)
        return item


def _tag(row: dict[str, Any], index: int, *, position: int, kind: str, root: str) -> dict[str, Any]:
    """A raw row as one column: the record (as JSON text, so shards of any schema mix) and where it is from."""
    value = _webdataset_record(row) if kind == "webdataset" else row
    meta = {"position": position, "index": index, "root": root}
    if kind == "webdataset":  # the shard, and the record's number in the file it was written from
        meta["source"] = row.get("__url__")
        meta["index"] = int(row["__key__"]) if str(row.get("__key__", "")).isdigit() else index
    return {"_fusevlm": {"meta": json.dumps(meta), "value": _encode_value(value)}}


def _encode_value(value: Any) -> Any:
    # Rows of different datasets must share one schema to be interleaved: the record travels as text, its image
    # bytes as latin-1 text (lossless) inside it.
    def default(item: Any) -> Any:
        if isinstance(item, (bytes, bytearray)):
            return {"__bytes__": bytes(item).decode("latin-1")}
        if isinstance(item, np.generic):
            return item.item()
        raise TypeError(f"cannot stream a value of type {type(item).__name__}")

    return json.dumps(value, default=default)


def decode_value(text: str) -> Any:
    def hook(item: dict) -> Any:
        if set(item) == {"__bytes__"}:
            return item["__bytes__"].encode("latin-1")
        return item

    return json.loads(text, object_hook=hook)


def write_webdataset(path: str | Path, output: str | Path, *, image_root: str | Path | None = None,
                     shard_size: int = 1000) -> list[Path]:
    """A LLaVA JSON/JSONL/Parquet file as WebDataset ``.tar`` shards of ``shard_size`` records: per record
    ``<key>.json`` (id and conversations) and ``<key>.image<k>.<ext>`` (its images' bytes, in placeholder order)."""
    path, output = Path(path), Path(output)
    output.mkdir(parents=True, exist_ok=True)
    root = _image_root(path, image_root)
    shards: list[Path] = []
    archive = None
    try:
        for count, row in enumerate(_iter_rows(path)):
            record = _row_to_record(row, root, None, require_answer=True, check_files=True)
            if count % shard_size == 0:
                if archive is not None:
                    archive.close()
                shards.append(output / f"shard-{len(shards):06d}.tar")
                archive = tarfile.open(shards[-1], "w")
            key = f"{count:09d}"
            body = {"id": record.id, "conversations": json.dumps(record.messages, ensure_ascii=False)}
            members = [(f"{key}.json", json.dumps(body, ensure_ascii=False).encode())]
            for k, ref in enumerate(record.images):
                data = ref.data if ref.data is not None else ref.path.read_bytes()
                suffix = (ref.path.suffix if ref.path is not None else ".png").lstrip(".").lower() or "png"
                members.append((f"{key}.{IMAGE_FIELD_PREFIX}{k}.{suffix}", data))
            for name, data in members:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    finally:
        if archive is not None:
            archive.close()
    return shards
