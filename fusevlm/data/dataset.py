"""Records -> model inputs for training: tokenized once up front (lengths feed the sampler), images loaded lazily.

The policy for a bad sample (``on_bad_sample``) holds at both moments it can show up:

* while tokenizing (a template that fails, a conversation whose image span would be cut by ``model_max_length``):
  ``error`` raises a ``DataError`` naming the record, ``skip`` drops and counts it;
* while loading its images in ``__getitem__`` (missing, corrupt, a bomb): ``error`` raises, ``skip`` counts it and
  serves the next good sample instead, so a batch keeps its size. The failure travels with the sample (DataLoader
  workers cannot share a report) and the trainer adds it to the run's report.

A conversation longer than ``model_max_length`` whose images all fit is truncated (and counted as truncated), as
LLaVA does; one that would lose part of an image, or every trained token, is a bad sample.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..processing import FuseVLMProcessor, pixel_values
from .errors import DataError
from .images import apply_aspect, load_image, mean_color
from .records import Record
from .report import BadSampleReport

IGNORE_INDEX = -100


@dataclass
class Encoded:
    record: Record
    input_ids: np.ndarray
    labels: np.ndarray
    task_id: int


class ConversationDataset(torch.utils.data.Dataset):
    def __init__(
        self,
        records: Sequence[Record],
        processor: FuseVLMProcessor,
        *,
        model_max_length: int,
        chat_template: str | None = None,
        image_aspect_ratio: str = "pad",
        on_bad_sample: str = "error",
        report: BadSampleReport | None = None,
        tasks: Sequence[str] | None = None,
    ):
        if image_aspect_ratio not in ("pad", "resize", "crop"):
            raise ValueError(f"image_aspect_ratio must be pad, resize or crop, got {image_aspect_ratio!r}")
        self.processor = processor
        self.model_max_length = model_max_length
        self.chat_template = chat_template
        self.image_aspect_ratio = image_aspect_ratio
        self.on_bad_sample = on_bad_sample
        self.report = report if report is not None else BadSampleReport()
        self.background = mean_color(processor.image_processor.image_mean)
        self.tasks = list(tasks) if tasks else sorted({r.task or "default" for r in records})
        self.truncated: dict[str, int] = {}
        self.samples: list[Encoded] = []
        for record in tqdm(records, desc="tokenizing", disable=len(records) < 2000):
            try:
                self.samples.append(self._encode(record))
            except DataError as err:
                self._handle(err)
        if not self.samples:
            raise DataError("no usable samples left after tokenizing", reason="all_bad",
                            source=records[0].source if records else None)

    def _encode(self, record: Record) -> Encoded:
        try:
            tokens = self.processor.tokenize_chat(record.messages, chat_template=self.chat_template)
        except (ValueError, TypeError) as err:  # template errors surface as plain exceptions
            raise DataError(str(err), source=record.source, index=record.index, record_id=record.id,
                            field="conversations", reason="template") from err
        ids, labels = tokens["input_ids"], tokens["labels"]
        limit = self.model_max_length
        if len(ids) > limit:
            image_id = self.processor.image_token_id
            if image_id in ids[limit:]:
                raise DataError(
                    f"{len(ids)} tokens; model_max_length {limit} would cut an image span",
                    source=record.source, index=record.index, record_id=record.id, field="conversations",
                    reason="too_long",
                )
            ids, labels = ids[:limit], labels[:limit]
            self.truncated[record.source] = self.truncated.get(record.source, 0) + 1
        if all(label == IGNORE_INDEX for label in labels):
            raise DataError(
                "no assistant tokens left to train (after truncation to model_max_length)",
                source=record.source, index=record.index, record_id=record.id, field="conversations",
                reason="no_labels",
            )
        task = record.task or "default"
        return Encoded(record, np.asarray(ids, dtype=np.int64), np.asarray(labels, dtype=np.int64),
                       self.tasks.index(task) if task in self.tasks else 0)

    def _handle(self, err: DataError) -> None:
        if self.on_bad_sample == "error":
            raise err
        self.report.add(err.source or "unknown", err)

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def lengths(self) -> list[int]:
        """Token lengths, negative for text-only samples (LLaVA's modality_lengths convention)."""
        return [len(s.input_ids) if s.record.images else -len(s.input_ids) for s in self.samples]

    def load_images(self, record: Record) -> list[Any]:
        images = []
        for position, ref in enumerate(record.images):
            try:
                image = load_image(ref)
            except DataError as err:
                # The image loader knows the file, not the record: name both.
                raise type(err)(
                    err.detail, source=record.source, index=record.index, record_id=record.id,
                    field=err.field or f"image[{position}] ({ref.label})", reason=err.reason,
                ) from err
            images.append(apply_aspect(image, self.image_aspect_ratio, self.background))
        return images

    def __getitem__(self, index: int) -> dict[str, Any]:
        errors: list[dict[str, Any]] = []
        for attempt in range(len(self.samples)):
            sample = self.samples[(index + attempt) % len(self.samples)]
            try:
                images = self.load_images(sample.record)
            except DataError as err:
                if self.on_bad_sample == "error":
                    raise
                errors.append({"dataset": sample.record.source, **err.to_dict()})
                continue
            item = {
                "input_ids": torch.from_numpy(sample.input_ids),
                "labels": torch.from_numpy(sample.labels),
                "task_id": sample.task_id,
                "data_errors": errors,
            }
            if images:
                item["pixel_values"] = pixel_values(self.processor.image_processor, images)
            return item
        raise DataError("every sample failed to load its images", reason="all_bad")


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
    keep: tuple[str, ...] = field(default=("task_ids", "data_errors"))

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
        return batch


def sample_records(records: list[Record], num_samples: int | None, seed: int) -> list[Record]:
    """Down- or up-sample a dataset to ``num_samples`` records, reproducibly (up-sampling repeats whole passes)."""
    if num_samples is None or num_samples == len(records):
        return list(records)
    if num_samples <= 0:
        raise ValueError(f"num_samples must be positive, got {num_samples}")
    rng = random.Random(seed)
    if num_samples < len(records):
        return rng.sample(records, num_samples)
    out = []
    while len(out) + len(records) <= num_samples:
        out += records
    return out + rng.sample(records, num_samples - len(out))
