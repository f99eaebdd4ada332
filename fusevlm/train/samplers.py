"""Samplers: LLaVA's modality/length grouping, and the MFT interleaving that puts every task in every batch."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler


class ModalityLengthGroupedSampler(Sampler[int]):
    """Batches hold one modality (image vs text-only) and similar lengths, in random order (LLaVA's sampler).

    ``lengths`` are positive for samples with images and negative for text-only ones. ``group_size`` is the global
    batch (per-device batch x processes), so each process's share of a batch is grouped too.
    """

    def __init__(self, lengths: Sequence[int], group_size: int, seed: int = 0, megabatch: int = 50):
        self.lengths = np.asarray(lengths)
        self.group_size = max(1, group_size)
        self.seed = seed
        self.megabatch = megabatch
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def _batches(self, indices: np.ndarray, generator: torch.Generator) -> list[np.ndarray]:
        order = indices[torch.randperm(len(indices), generator=generator).numpy()]
        size = self.group_size * self.megabatch
        batches = []
        for start in range(0, len(order), size):
            mega = order[start : start + size]
            mega = mega[np.argsort(-np.abs(self.lengths[mega]), kind="stable")]
            batches += [mega[i : i + self.group_size] for i in range(0, len(mega), self.group_size)]
        return batches

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        image = np.flatnonzero(self.lengths > 0)
        text = np.flatnonzero(self.lengths <= 0)
        batches = self._batches(image, generator) + self._batches(text, generator)
        # Full batches in random order; the partial ones last, so only the final step is ragged.
        full = [b for b in batches if len(b) == self.group_size]
        partial = [b for b in batches if len(b) != self.group_size]
        full = [full[i] for i in torch.randperm(len(full), generator=generator).tolist()]
        ordered = full + partial
        return iter(np.concatenate(ordered).tolist() if ordered else [])


class TaskInterleavedSampler(Sampler[int]):
    """Spreads each task's samples evenly over the epoch, so every batch sees every task in proportion.

    The seed's MFT trainer draws every task in every step; with batch size >= number of tasks and balanced
    tasks, each batch here holds each task.
    """

    def __init__(self, task_ids: Sequence[int], seed: int = 0):
        self.task_ids = np.asarray(task_ids)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.task_ids)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        keys, members_all = [], []
        for task in np.unique(self.task_ids):
            members = np.flatnonzero(self.task_ids == task)
            members = members[torch.randperm(len(members), generator=generator).numpy()]
            jitter = torch.rand(len(members), generator=generator).numpy().astype(np.float64)
            keys.append((np.arange(len(members)) + jitter) / len(members))
            members_all.append(members)
        if not keys:
            return iter([])
        keys_all, members = np.concatenate(keys), np.concatenate(members_all)
        return iter(members[np.lexsort((members, keys_all))].tolist())
