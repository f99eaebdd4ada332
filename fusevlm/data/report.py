"""Counting what a run could not use: skipped samples per dataset and reason, with a few examples each."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from fusevlm.data.errors import DataError


class BadSampleReport:
    """Counts skipped samples per dataset and per reason, with a few examples of each.

    ``seen``/``kept`` come from the reader; ``skipped`` also counts later failures (e.g. an image that does not
    decode at training time) that callers ``add``. Merge reports from several readers (or ranks) with ``merge``.
    """

    def __init__(self, max_examples: int = 3) -> None:
        self.max_examples = max_examples
        self.datasets: dict[str, dict[str, Any]] = {}

    def _tally(self, dataset: str) -> dict[str, Any]:
        return self.datasets.setdefault(
            str(dataset), {"seen": 0, "kept": 0, "skipped": 0, "reasons": {}, "examples": []}
        )

    def add(self, dataset: str, error: DataError) -> None:
        """Count one skipped sample of ``dataset`` and keep it as an example if its reason has few so far."""
        tally = self._tally(dataset)
        tally["skipped"] += 1
        tally["reasons"][error.reason] = tally["reasons"].get(error.reason, 0) + 1
        self._keep_example(tally, error.to_dict())

    def _keep_example(self, tally: dict[str, Any], example: dict[str, Any]) -> None:
        same_reason = sum(1 for kept in tally["examples"] if kept["reason"] == example["reason"])
        if same_reason < self.max_examples:
            tally["examples"].append(example)

    def add_read(self, dataset: str, *, seen: int, kept: int) -> None:
        """Record how many records a reader saw in ``dataset`` and how many it kept."""
        tally = self._tally(dataset)
        tally["seen"] += seen
        tally["kept"] += kept

    @property
    def skipped(self) -> int:
        return sum(tally["skipped"] for tally in self.datasets.values())

    def reasons(self, dataset: str | None = None) -> dict[str, int]:
        """Skips per reason, for one dataset or summed over all."""
        tallies = (
            [self.datasets.get(str(dataset), {"reasons": {}})]
            if dataset is not None
            else self.datasets.values()
        )
        total: dict[str, int] = {}
        for tally in tallies:
            for reason, count in tally["reasons"].items():
                total[reason] = total.get(reason, 0) + count
        return total

    def merge(self, other: BadSampleReport) -> BadSampleReport:
        """Add ``other``'s counts and examples into this report; returns ``self``."""
        for dataset, theirs in other.datasets.items():
            ours = self._tally(dataset)
            for key in ("seen", "kept", "skipped"):
                ours[key] += theirs[key]
            for reason, count in theirs["reasons"].items():
                ours["reasons"][reason] = ours["reasons"].get(reason, 0) + count
            for example in theirs["examples"]:
                self._keep_example(ours, example)
        return self

    def summary(self) -> str:
        """A few lines for the end of a run: totals, then each dataset's skips by reason and one example each."""
        seen = sum(tally["seen"] for tally in self.datasets.values())
        lines = [f"bad samples: {self.skipped} skipped ({seen} records read)"]
        for dataset, tally in self.datasets.items():
            if not tally["skipped"]:
                continue
            reasons = ", ".join(f"{reason} {count}" for reason, count in sorted(tally["reasons"].items()))
            lines.append(f"  {dataset}: {tally['skipped']} skipped of {tally['seen']} read ({reasons})")
            shown: set[str] = set()
            for example in tally["examples"]:
                if example["reason"] not in shown:
                    shown.add(example["reason"])
                    lines.append(f"    e.g. {example['message']}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"skipped": self.skipped, "datasets": json.loads(json.dumps(self.datasets))}

    def to_json(self, indent: int = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def save(self, path: str | os.PathLike) -> None:
        """Write ``to_json()`` to ``path`` (the trainer writes ``data_report.json`` into its output folder)."""
        Path(path).write_text(self.to_json() + "\n", encoding="utf-8")

    @classmethod
    def from_dict(cls, data: dict[str, Any], max_examples: int = 3) -> BadSampleReport:
        report = cls(max_examples=max_examples)
        report.datasets = json.loads(json.dumps(data["datasets"]))
        return report

    def __repr__(self) -> str:
        return f"BadSampleReport(skipped={self.skipped}, datasets={list(self.datasets)})"
