"""Sequence packing: several samples per row, attention kept within each sample, no compute spent on padding.

``PackingCollator`` takes the samples the sampler gave for one step (the same samples a padded batch would hold)
and packs them, first-fit decreasing by length, into as few rows of at most ``max_length`` tokens as it can. In a
row, ``position_ids`` restart at 0 for each sample, and the batch carries no ``attention_mask``: from such position
ids transformers' masking utils build a block-diagonal causal mask (sdpa, eager, flex; only when there is no
``attention_mask`` and no cache, so the training forward must run with ``use_cache=False``). Flash-attention
reads the same boundaries: with one row it finds them in ``position_ids`` itself; with several rows it needs
``cu_seq_lens_q/k`` and ``max_length_q/k`` over the flattened rows, which ``flash_attn_kwargs=True`` adds.

The first label of every sample is -100, so no sample is trained to predict its neighbour's first token. The
tail of a row that is not full is padding: its own segment (positions from 0 again), labels -100.

The batch, in packed order (row by row, left to right):

* ``input_ids``, ``labels``, ``position_ids``: ``(rows, T)``, T the longest row;
* ``sample_index``: ``(rows, T)`` long, the number of the sample each token belongs to, -1 on padding;
* ``task_ids``: ``(num_samples,)``, one per sample in the same numbering;
* ``pixel_values``: the images of all samples stacked in token order;
* ``data_errors``: as ``VLMCollator``'s.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from .dataset import IGNORE_INDEX, Batch


def pack_rows(lengths: Sequence[int], max_length: int) -> list[list[int]]:
    """Indices of the samples in each row: first-fit decreasing, each row's total at most ``max_length``.

    Deterministic (ties keep the given order). Within a row the samples keep their given order, and rows are
    ordered by their first sample. A sample longer than ``max_length`` gets a row of its own.
    """
    if max_length <= 0:
        raise ValueError(f"max_length must be positive, got {max_length}")
    rows: list[list[int]] = []
    room: list[int] = []
    for index in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        n = lengths[index]
        for row, free in enumerate(room):
            if n <= free:
                rows[row].append(index)
                room[row] -= n
                break
        else:
            rows.append([index])
            room.append(max(max_length - n, 0))
    rows = [sorted(row) for row in rows]
    return sorted(rows, key=lambda row: row[0])


def flash_attn_kwargs(position_ids: torch.Tensor) -> dict[str, Any]:
    """``cu_seq_lens_q/k`` and ``max_length_q/k`` for flash-attention's varlen kernel over the flattened rows.

    Every position 0 starts a sequence (a sample or a row's padding tail), as in transformers'
    ``prepare_fa_kwargs_from_position_ids``, but for any number of rows.
    """
    flat = position_ids.reshape(-1)
    starts = (flat == 0).nonzero().flatten()
    cu = torch.cat([starts, torch.tensor([flat.numel()])]).to(torch.int32)
    longest = int(cu.diff().max())
    return {"cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": longest, "max_length_k": longest}


@dataclass
class PackingCollator:
    """Packs the samples of a step into rows of at most ``max_length`` tokens (the recipe's ``model_max_length``)."""

    pad_token_id: int
    max_length: int
    flash_attn_kwargs: bool = False

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        rows = pack_rows([len(f["input_ids"]) for f in features], self.max_length)
        width = max(sum(len(features[i]["input_ids"]) for i in row) for row in rows)
        shape = (len(rows), width)
        input_ids = torch.full(shape, self.pad_token_id, dtype=torch.long)
        labels = torch.full(shape, IGNORE_INDEX, dtype=torch.long)
        position_ids = torch.zeros(shape, dtype=torch.long)
        sample_index = torch.full(shape, -1, dtype=torch.long)
        positions = torch.arange(width)
        order = [i for row in rows for i in row]
        number = 0
        for r, row in enumerate(rows):
            offset = 0
            for i in row:
                n = len(features[i]["input_ids"])
                span = slice(offset, offset + n)
                input_ids[r, span] = features[i]["input_ids"]
                labels[r, span] = features[i]["labels"]
                labels[r, offset] = IGNORE_INDEX
                position_ids[r, span] = positions[:n]
                sample_index[r, span] = number
                number += 1
                offset += n
            position_ids[r, offset:] = positions[: width - offset]  # the padding tail: a segment of its own
        batch = Batch(input_ids=input_ids, labels=labels, position_ids=position_ids, sample_index=sample_index)
        if self.flash_attn_kwargs:
            batch.update(flash_attn_kwargs(position_ids))
        pixels = [features[i]["pixel_values"] for i in order if "pixel_values" in features[i]]
        if pixels:
            batch["pixel_values"] = torch.cat(pixels, dim=0)
        batch["task_ids"] = torch.tensor([features[i].get("task_id", 0) for i in order], dtype=torch.long)
        batch["data_errors"] = [e for f in features for e in f.get("data_errors", [])]
        if any("sample_id" in f for f in features):
            batch["sample_ids"] = [features[i].get("sample_id") for i in order]
        return batch


def per_sample_losses(logits: torch.Tensor, labels: torch.Tensor, sample_index: torch.Tensor,
                      num_samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each sample's summed next-token loss and its trained-token count, from a packed (or padded) batch.

    For a padded batch pass ``sample_index = arange(B)[:, None].expand(B, T)``. The loss at position t is the
    prediction of label t+1 and belongs to the sample of token t+1.
    """
    shifted = labels[:, 1:]
    losses = torch.nn.functional.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(), shifted.flatten(), ignore_index=IGNORE_INDEX, reduction="none"
    )
    owner = sample_index[:, 1:].flatten()
    trained = (shifted.flatten() != IGNORE_INDEX) & (owner >= 0)
    sums = torch.zeros(num_samples, dtype=losses.dtype, device=losses.device).index_add_(0, owner[trained], losses[trained])
    counts = torch.zeros(num_samples, dtype=torch.long, device=losses.device).index_add_(0, owner[trained], torch.ones_like(owner[trained]))
    return sums, counts


def packing_collator(model: Any, pad_token_id: int, max_length: int) -> PackingCollator:
    """The collator for ``model``: flash-attention's varlen kwargs only when its LM runs flash-attention."""
    from transformers.utils.generic import is_flash_attention_requested

    flash = is_flash_attention_requested(model.config.get_text_config())
    return PackingCollator(pad_token_id, max_length, flash_attn_kwargs=flash)


@contextmanager
def without_cache(model: Any) -> Iterator[None]:
    """The LM's ``use_cache`` off while packed rows go through it, then back as it was.

    transformers' masking utils tell packed samples apart by ``position_ids`` only when no cache is built; a forward
    that builds one (any forward with ``use_cache`` left to the config, evaluation included) would attend across
    samples. Restored afterwards so the saved model still generates with a cache.
    """
    config = model.config.get_text_config()
    before = config.use_cache
    config.use_cache = False
    try:
        yield
    finally:
        config.use_cache = before


__all__ = ["PackingCollator", "flash_attn_kwargs", "pack_rows", "packing_collator", "per_sample_losses", "without_cache"]
