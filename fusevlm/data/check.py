"""``fusevlm data check``: every record and every image of a mixture looked at before a long run, in parallel.

Training does not open image files up front (``dataset``): a missing or corrupt image is met when its sample is
loaded. This check does the whole job once, ahead of time: the reader's checks on every record, each image's path
resolved (symlinks included) and the image read and decoded - the very calls training makes - in processes over
chunks of each file. The result is a ``BadSampleReport`` in ``data_report.json``'s format: per dataset the records
seen and kept, the skips per reason and a few examples naming file, record, id and field.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from .errors import DataError
from .images import load_image
from .records import Chunk, _image_root, _row_to_record, plan_chunks, read_chunk
from .report import BadSampleReport


def check_records(sources: Sequence[Any], *, num_proc: int | None = None, progress: bool = True) -> BadSampleReport:
    """Check every record and image of ``sources`` (objects with ``path`` and ``image_root``, as recipe entries)."""
    jobs = []
    for source in sources:
        path = Path(source.path)
        root = _image_root(path, source.image_root)
        jobs += [(str(path), chunk, str(root)) for chunk in plan_chunks(path)]
    report = BadSampleReport()
    first_index_of_id: dict[tuple[str, str], int] = {}
    workers = max(1, min(num_proc or os.cpu_count() or 1, len(jobs)))
    context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else None)
    with context.Pool(workers) if workers > 1 else _Inline() as pool, \
            tqdm(desc="checking records and images", unit="record", disable=not progress) as bar:
        for dataset, seen, kept, examples in pool.imap(_check_chunk, jobs):
            local = BadSampleReport()
            for err in examples:
                local.add(dataset, err)
            for source, record_id, index in kept:
                key = (source, record_id)
                if key in first_index_of_id:
                    local.add(dataset, DataError(f"duplicate id, first used by record {first_index_of_id[key]}",
                                                 source=source, index=index, record_id=record_id, field="id",
                                                 reason="duplicate_id"))
                else:
                    first_index_of_id[key] = index
            local.add_read(dataset, seen=seen, kept=seen - local.skipped)
            report.merge(local)
            bar.update(seen)
    return report


class _Inline:
    """A one-process stand-in for ``Pool`` (no process started for a small dataset)."""

    def __enter__(self) -> _Inline:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def imap(self, function: Any, jobs: list) -> Any:
        return map(function, jobs)


def _check_chunk(job: tuple[str, Chunk, str]) -> tuple[str, int, list[tuple[str, str, int]], list[DataError]]:
    """(dataset, records seen, (file, id, index) of the good ones, errors of the bad ones) of one chunk."""
    dataset, chunk, root = job
    seen, kept, errors = 0, [], []
    for row in read_chunk(chunk):
        seen += 1
        try:
            record = _row_to_record(row, Path(root), None, require_answer=True, check_files=True)
            for position, ref in enumerate(record.images):
                try:
                    load_image(ref)
                except DataError as err:  # as training names it: the record, and the image in it
                    raise type(err)(err.detail, source=record.source, index=record.index, record_id=record.id,
                                    field=err.field or f"image[{position}] ({ref.label})", reason=err.reason) from None
        except DataError as err:
            errors.append(err)
            continue
        kept.append((record.source, record.id, record.index))
    return dataset, seen, kept, errors
