"""A mixture of datasets -> model inputs for training: tokenized once into a cache (lengths feed the sampler),
images loaded lazily.

``load_mixture`` opens (or first builds) each dataset's cache (``cache``), applies ``on_bad_sample`` to the errors
recorded there and draws each dataset's ``num_samples`` as an array of row numbers. The dataset then holds a few
integers per sample; a sample's tokens and image references are read from the memory-mapped cache when it is
loaded. The policy for a bad sample holds at both moments it can show up:

* in the cache (a record the reader refuses, a template that fails, a conversation whose image span would be cut
  by ``model_max_length``): ``error`` raises a ``DataError`` naming the record, ``skip`` drops and counts it;
* while loading its images in ``__getitem__`` (missing - image files are not looked at before, corrupt, a bomb, a
  path that leaves ``image_root`` through a symlink): ``error`` raises, ``skip`` counts it and serves the next good
  sample instead, so a batch keeps its size. The failure travels with the sample (DataLoader workers cannot share
  a report) and the trainer adds it to the run's report. The first images of each dataset are looked at before
  training, so a wrong ``image_root`` fails at once rather than at the first step.

A conversation longer than ``model_max_length`` whose images all fit is truncated (and counted as truncated), as
LLaVA does; one that would lose part of an image, or every trained token, is a bad sample.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from ..processing import FuseVLMProcessor, pixel_values
from .cache import EncodedFile, encode_file
from .errors import DataError
from .images import ImageRef, apply_aspect, load_image, mean_color
from .records import _image_root, image_path_ref
from .report import BadSampleReport

IGNORE_INDEX = -100
PROBE_IMAGES = 16  # images looked at per dataset before training


class DataSource(Protocol):
    """A dataset of a mixture, as a recipe's ``data`` entry names it."""

    path: str
    image_root: str | None
    task: str | None
    num_samples: int | None


@dataclass
class Source:
    path: str
    image_root: str | None = None
    task: str | None = None
    num_samples: int | None = None


def check_sources(sources: Sequence[DataSource]) -> None:
    """What can be checked without a tokenizer, before any weights load: each file and image root exists."""
    for source in sources:
        path = Path(source.path)
        if not path.exists():
            raise DataError("data file not found", source=str(path), reason="missing_file")
        _image_root(path, source.image_root)


def load_mixture(
    sources: Sequence[DataSource],
    processor: FuseVLMProcessor,
    *,
    model_max_length: int,
    chat_template: str | None = None,
    image_aspect_ratio: str = "pad",
    on_bad_sample: str = "error",
    report: BadSampleReport | None = None,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    num_proc: int | None = None,
) -> ConversationDataset:
    """Every dataset of a mixture, cached and checked, its task set and its ``num_samples`` drawn.

    A sample's task is its dataset's ``task``, else the record's own ``task``, else the dataset file's name.
    ``num_samples`` draws that many of the dataset's good samples (fewer: a random subset; more: whole passes and a
    random subset), reproducibly from ``seed`` and the dataset's position.
    """
    if on_bad_sample not in ("error", "skip"):
        raise ValueError(f"on_bad_sample must be one of ('error', 'skip'), got {on_bad_sample!r}")
    report = report if report is not None else BadSampleReport()
    files = []
    for source in sources:
        root = _image_root(Path(source.path), source.image_root)
        files.append(encode_file(source.path, processor, image_root=root, chat_template=chat_template,
                                 model_max_length=model_max_length, cache_dir=cache_dir, num_proc=num_proc))
    errors = [encoded.errors() for encoded in files]
    usable = [encoded.usable_rows() for encoded in files]
    probes = [_probe_images(encoded, rows) for encoded, rows in zip(files, usable, strict=True)]
    for encoded, (reader_errors, _), probe in zip(files, errors, probes, strict=True):
        if on_bad_sample == "error" and (reader_errors or probe):
            # The first bad record in the file, as a reader that looked at every image would have met it.
            raise min(reader_errors[:1] + probe[:1], key=lambda pair: pair[0])[1]
        local = BadSampleReport()
        for _, err in reader_errors:
            local.add(encoded.source, err)
        local.add_read(encoded.source, seen=encoded.meta["seen"], kept=encoded.meta["reader_kept"])
        report.merge(local)
        if encoded.meta["seen"] and not encoded.meta["reader_kept"]:
            raise DataError(f"all {encoded.meta['seen']} records are bad\n{local.summary()}", source=encoded.source,
                            reason="all_bad")
    for encoded, (_, tokenizer_errors) in zip(files, errors, strict=True):
        for _, err in tokenizer_errors:
            if on_bad_sample == "error":
                raise err
            report.add(encoded.source, err)
    rows, task_names, task_codes = [], [], []
    for position, (source, encoded) in enumerate(zip(sources, files, strict=True)):
        probed = probes[position]
        if probed and len(probed) == _probed_count(encoded, usable[position]):
            raise DataError(f"none of the first {len(probed)} images can be used (is image_root right?); the first: "
                            f"{probed[0][1]}", source=encoded.source, reason=probed[0][1].reason)
        drawn = usable[position]
        if source.num_samples is not None:
            drawn = drawn[sample_indices(len(drawn), source.num_samples, seed + position)]
        names, codes = _tasks(encoded, drawn, source.task or None, Path(source.path).stem)
        rows.append(drawn)
        task_names.append(names)
        task_codes.append(codes)
    tasks = list(dict.fromkeys(name for names in task_names for name in names))  # in order of first appearance
    task_ids = [np.asarray([tasks.index(name) for name in names], dtype=np.int16)[codes]
                for names, codes in zip(task_names, task_codes, strict=True)]
    return ConversationDataset(files, rows, task_ids, tasks, processor, image_aspect_ratio=image_aspect_ratio,
                               on_bad_sample=on_bad_sample)


def _tasks(encoded: EncodedFile, rows: np.ndarray, task: str | None, default: str) -> tuple[list[str], np.ndarray]:
    """The task names of one dataset's samples in order of first appearance, and each sample's position in them."""
    column = encoded.column("task")
    if task is not None or not len(rows) or column.null_count == len(column):
        return [task or default], np.zeros(len(rows), dtype=np.int32)
    import pyarrow.compute as pc

    # Arrow's dictionary encoding: a few names and an int per sample, never a Python string per sample.
    encoded_names = pc.fill_null(column.take(rows), default).combine_chunks().dictionary_encode()
    names = encoded_names.dictionary.to_pylist()
    codes = encoded_names.indices.to_numpy()
    _, first = np.unique(codes, return_index=True)
    order = np.argsort(first)  # the dictionary's order, renumbered by first appearance
    renumber = np.empty(len(names), dtype=np.int32)
    renumber[order] = np.arange(len(order), dtype=np.int32)
    return [names[k] for k in order], renumber[codes]


def _probe_images(encoded: EncodedFile, usable: np.ndarray) -> list[tuple[int, DataError]]:
    """The failures among the first images of a dataset, looked at now: under ``error`` the first is the error it
    would be at its step; under ``skip``, every one of them failing means a wrong ``image_root``, not bad records."""
    failures = []
    for row in usable[:PROBE_IMAGES].tolist():
        sample = encoded.row(row)
        for raw, record_field in zip(sample["image_paths"], sample["image_fields"], strict=True):
            if raw is not None:
                try:
                    image_path_ref(raw, record_field, encoded.image_root)
                except DataError as err:
                    failures.append((row, _located(err, encoded, sample)))
    return failures


def _probed_count(encoded: EncodedFile, usable: np.ndarray) -> int:
    paths = encoded.column("image_paths").take(usable[:PROBE_IMAGES]).to_pylist()
    return sum(raw is not None for images in paths for raw in images)


def _located(err: DataError, encoded: EncodedFile, sample: dict[str, Any]) -> DataError:
    return err.located(source=encoded.parts[sample["part"]], index=sample["index"], record_id=sample["id"],
                       line=sample["line"])


def sample_indices(count: int, num_samples: int | None, seed: int) -> np.ndarray:
    """Positions of ``num_samples`` draws from ``count`` items, reproducibly (up-sampling repeats whole passes)."""
    if num_samples is None or num_samples == count:
        return np.arange(count)
    if num_samples <= 0:
        raise ValueError(f"num_samples must be positive, got {num_samples}")
    rng = np.random.default_rng(seed)
    passes = np.tile(np.arange(count), num_samples // count) if count else np.zeros(0, dtype=np.int64)
    return np.concatenate([passes, rng.choice(count, num_samples % count if count else 0, replace=False)])


class ConversationDataset(torch.utils.data.Dataset):
    """The samples of a mixture: per sample its dataset and cache row, task id and length - the rest is read from
    the cache when a sample is loaded."""

    def __init__(
        self,
        files: Sequence[EncodedFile],
        rows: Sequence[np.ndarray],
        task_ids: Sequence[np.ndarray],
        tasks: Sequence[str],
        processor: FuseVLMProcessor,
        *,
        image_aspect_ratio: str = "pad",
        on_bad_sample: str = "error",
    ):
        if image_aspect_ratio not in ("pad", "resize", "crop"):
            raise ValueError(f"image_aspect_ratio must be pad, resize or crop, got {image_aspect_ratio!r}")
        self.files = list(files)
        self.processor = processor
        self.image_aspect_ratio = image_aspect_ratio
        self.on_bad_sample = on_bad_sample
        self.background = mean_color(processor.image_processor.image_mean)
        self.tasks = list(tasks)
        self.rows = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
        self.task_ids = np.concatenate(task_ids) if task_ids else np.zeros(0, dtype=np.int16)
        self.starts = np.cumsum([0, *(len(r) for r in rows)])
        lengths, truncated = [], {}
        for encoded, file_rows in zip(self.files, rows, strict=True):
            length = encoded.column("length").to_numpy()[file_rows]
            images = encoded.column("num_images").to_numpy()[file_rows]
            lengths.append(np.where(images > 0, length, -length).astype(np.int32))
            cut = encoded.column("truncated").to_numpy(zero_copy_only=False)[file_rows]
            parts = encoded.column("part").to_numpy()[file_rows[cut]]
            for part, count in enumerate(np.bincount(parts, minlength=len(encoded.parts)).tolist()):
                if count:
                    truncated[encoded.parts[part]] = truncated.get(encoded.parts[part], 0) + count
        #: token lengths, negative for text-only samples (LLaVA's modality_lengths convention)
        self.lengths = np.concatenate(lengths) if lengths else np.zeros(0, dtype=np.int32)
        self.truncated: dict[str, int] = truncated
        if not len(self.rows):
            raise DataError("no usable samples left after tokenizing", reason="all_bad",
                            source=self.files[0].source if self.files else None)

    def __len__(self) -> int:
        return len(self.rows)

    def locate(self, index: int) -> tuple[EncodedFile, int]:
        """The cache and row of sample ``index``."""
        f = int(np.searchsorted(self.starts, index, side="right")) - 1
        return self.files[f], int(self.rows[index])

    def sample(self, index: int) -> tuple[EncodedFile, dict[str, Any]]:
        """Sample ``index`` as stored: its cache and its row, with ``source`` (the file its record came from)."""
        encoded, row = self.locate(index)
        sample = encoded.row(row)
        sample["source"] = encoded.parts[sample["part"]]
        return encoded, sample

    def tokens(self, sample: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        ids, labels = self.processor.expand_image_tokens_ids(np.asarray(sample["input_ids"]),
                                                             np.asarray(sample["labels"]))
        return ids[: sample["length"]], labels[: sample["length"]]

    def load_images(self, encoded: EncodedFile, sample: dict[str, Any]) -> list[Any]:
        images = []
        for position, (raw, record_field, label, data) in enumerate(zip(
            sample["image_paths"], sample["image_fields"], sample["image_labels"], sample["image_bytes"], strict=True
        )):
            if data is not None:
                ref = ImageRef.from_bytes(data, label=label, record_field=record_field)
            else:
                try:  # the reader's own check, deferred to now: the same error as reading would have given
                    ref = image_path_ref(raw, record_field, encoded.image_root)
                except DataError as err:
                    raise _located(err, encoded, sample) from None
            try:
                image = load_image(ref)
            except DataError as err:
                # The image loader knows the file, not the record: name both.
                raise type(err)(
                    err.detail, source=sample["source"], index=sample["index"], record_id=sample["id"],
                    field=err.field or f"image[{position}] ({label})", reason=err.reason,
                ) from err
            images.append(apply_aspect(image, self.image_aspect_ratio, self.background))
        return images

    def __getitem__(self, index: int) -> dict[str, Any]:
        errors: list[dict[str, Any]] = []
        for attempt in range(len(self)):
            position = (index + attempt) % len(self)
            encoded, sample = self.sample(position)
            try:
                images = self.load_images(encoded, sample)
            except DataError as err:
                if self.on_bad_sample == "error":
                    raise
                errors.append({"dataset": encoded.source, **err.to_dict()})
                continue
            input_ids, labels = self.tokens(sample)
            item = {
                "input_ids": torch.from_numpy(input_ids),
                "labels": torch.from_numpy(labels),
                "task_id": int(self.task_ids[position]),
                "data_errors": errors,
            }
            if images:
                item["pixel_values"] = pixel_values(self.processor.image_processor, images)
            return item
        raise DataError(f"every sample failed to load its images; the last: {errors[-1]['message']}",
                        reason="all_bad")

    def records(self) -> Iterator[tuple[np.ndarray, str]]:
        """(input ids, "file record N (id '...')") of every sample, in order: for messages that name records."""
        for index in range(len(self)):
            _, sample = self.sample(index)
            yield self.tokens(sample)[0], f"{sample['source']} record {sample['index']} (id {sample['id']!r})"


INLINE_TENSOR_BYTES = 1 << 20


class Batch(dict):
    """A collated batch: a plain ``dict`` that leaves a DataLoader worker cheaply.

    torch hands a worker's tensors to the main process through shared memory, one segment per tensor, set up over
    a socket: about 0.7 ms each here, 3.6 ms for a padded batch of 4 (five tensors) - more than decoding its images.
    Tensors of at most ``INLINE_TENSOR_BYTES`` travel inside the pickle instead (0.09 ms for the same batch); larger
    ones, where copying through the pipe would cost more than the segment, still go by shared memory. The main
    process receives a plain ``dict``.
    """

    def __reduce__(self) -> tuple[Any, tuple[dict[str, Any], list[str]]]:
        inline = [key for key, value in self.items() if isinstance(value, torch.Tensor) and _travels_inline(value)]
        items = {key: value.numpy() if key in inline else value for key, value in self.items()}
        return _unpickle_batch, (items, inline)


def _travels_inline(tensor: torch.Tensor) -> bool:
    small = tensor.numel() * tensor.element_size() <= INLINE_TENSOR_BYTES
    return small and tensor.device.type == "cpu" and not tensor.requires_grad and tensor.dtype != torch.bfloat16


def _unpickle_batch(items: dict[str, Any], inline: list[str]) -> dict[str, Any]:
    return {key: torch.from_numpy(value) if key in inline else value for key, value in items.items()}


@dataclass
class VLMCollator:
    """Pads a list of samples into a batch; images of all samples are stacked in sample order."""

    pad_token_id: int
    padding_side: str = "right"
    keep: tuple[str, ...] = field(default=("task_ids", "data_errors", "sample_ids"))

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        longest = max(len(f["input_ids"]) for f in features)
        input_ids = torch.full((len(features), longest), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(features), longest), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(features), longest), dtype=torch.long)
        for row, feature in enumerate(features):
            n = len(feature["input_ids"])
            span = slice(longest - n, longest) if self.padding_side == "left" else slice(0, n)
            input_ids[row, span] = feature["input_ids"]
            labels[row, span] = feature["labels"]
            attention_mask[row, span] = 1
        batch = Batch(input_ids=input_ids, labels=labels, attention_mask=attention_mask)
        pixels = [f["pixel_values"] for f in features if "pixel_values" in f]
        if pixels:
            batch["pixel_values"] = torch.cat(pixels, dim=0)
        batch["task_ids"] = torch.tensor([f.get("task_id", 0) for f in features], dtype=torch.long)
        batch["data_errors"] = [e for f in features for e in f.get("data_errors", [])]
        if any("sample_id" in f for f in features):  # streamed samples name themselves
            batch["sample_ids"] = [f.get("sample_id") for f in features]
        return batch
