"""Samplers: LLaVA's modality/length grouping, and the MFT interleaving that puts every task in every batch."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler


class ModalityLengthGroupedSampler(Sampler[int]):
    """Batches hold one modality (image vs text-only) and similar lengths, in random order (LLaVA's sampler).

    ``lengths`` are positive for samples with images and negative for text-only ones. ``group_size`` is the global
    batch (per-device batch x processes), so each process's share of a batch is grouped too.
    """

    def __init__(self, lengths: Sequence[int], group_size: int, seed: int = 0, megabatch: int = 50):
        self.lengths = list(lengths)
        self.group_size = max(1, group_size)
        self.seed = seed
        self.megabatch = megabatch
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def _batches(self, indices: list[int], generator: torch.Generator) -> list[list[int]]:
        order = [indices[i] for i in torch.randperm(len(indices), generator=generator).tolist()]
        size = self.group_size * self.megabatch
        batches = []
        for start in range(0, len(order), size):
            mega = sorted(order[start : start + size], key=lambda i: -abs(self.lengths[i]))
            batches += [mega[i : i + self.group_size] for i in range(0, len(mega), self.group_size)]
        return batches

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        image = [i for i, n in enumerate(self.lengths) if n > 0]
        text = [i for i, n in enumerate(self.lengths) if n <= 0]
        batches = self._batches(image, generator) + self._batches(text, generator)
        # Full batches in random order; the partial ones last, so only the final step is ragged.
        full = [b for b in batches if len(b) == self.group_size]
        partial = [b for b in batches if len(b) != self.group_size]
        full = [full[i] for i in torch.randperm(len(full), generator=generator).tolist()]
        return iter([i for batch in full + partial for i in batch])


class TaskInterleavedSampler(Sampler[int]):
    """Spreads each task's samples evenly over the epoch, so every batch sees every task in proportion.

    The seed's MFT trainer draws every task in every step; with batch size >= number of tasks and balanced
    tasks, each batch here holds each task.
    """

    def __init__(self, task_ids: Sequence[int], seed: int = 0):
        self.task_ids = list(task_ids)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.task_ids)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        keyed = []
        for task in sorted(set(self.task_ids)):
            members = [i for i, t in enumerate(self.task_ids) if t == task]
            members = [members[i] for i in torch.randperm(len(members), generator=generator).tolist()]
            jitter = torch.rand(len(members), generator=generator).tolist()
            keyed += [((k + jitter[k]) / len(members), i) for k, i in enumerate(members)]
        return iter([i for _, i in sorted(keyed)])
