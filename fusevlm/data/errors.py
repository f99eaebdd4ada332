"""Errors raised while reading datasets and images.

Every error names where it happened (file, record index and id, field) so that a user can open the file and fix
the record, and carries a short machine-readable ``reason`` so that skipped samples can be counted per cause.
"""

from __future__ import annotations


class DataError(ValueError):
    """A dataset file, record or image that cannot be used.

    ``str(err)`` reads ``"<source>: record <index> (id '<id>'), field '<field>': <detail>"``; the parts are also
    kept as attributes for reports. ``index`` is ``None`` for errors about a file as a whole.
    """

    def __init__(
        self,
        detail: str,
        *,
        source: str | None = None,
        index: int | None = None,
        record_id: str | None = None,
        field: str | None = None,
        reason: str = "invalid",
        line: int | None = None,
    ) -> None:
        self.detail = detail
        self.source = source
        self.index = index
        self.record_id = record_id
        self.field = field
        self.reason = reason
        self.line = line
        super().__init__(self._compose())

    def _compose(self) -> str:
        where = []
        if self.source is not None:
            where.append(str(self.source))
        record = []
        if self.line is not None:
            record.append(f"line {self.line}")
        if self.index is not None:
            record.append(f"record {self.index}")
        if self.record_id is not None:
            record.append(f"(id {self.record_id!r})")
        if record:
            where.append(" ".join(record))
        if self.field is not None:
            where.append(f"field {self.field!r}")
        return f"{', '.join(where)}: {self.detail}" if where else self.detail

    def located(
        self, *, source: str, index: int | None, record_id: str | None, line: int | None = None
    ) -> DataError:
        """A copy of this error with the record's location filled in where it was missing.

        Field checks raise without knowing which file and record they look at; the reader adds that here.
        """
        return type(self)(
            self.detail,
            source=self.source if self.source is not None else source,
            index=self.index if self.index is not None else index,
            record_id=self.record_id if self.record_id is not None else record_id,
            field=self.field,
            reason=self.reason,
            line=self.line if self.line is not None else line,
        )

    def __reduce__(self) -> tuple:
        # Pickled whole (worker processes send errors back): the default would keep only the message.
        return _rebuild, (type(self), self.detail, self.location())

    def location(self) -> dict:
        return {"source": self.source, "index": self.index, "record_id": self.record_id, "field": self.field,
                "reason": self.reason, "line": self.line}

    def to_dict(self) -> dict:
        return {
            "source": self.source,
            "index": self.index,
            "id": self.record_id,
            "field": self.field,
            "reason": self.reason,
            "message": str(self),
        }


def _rebuild(cls: type[DataError], detail: str, location: dict) -> DataError:
    return cls(detail, **location)


class ImageError(DataError):
    """An image that is missing, unreadable, corrupt, too large or in a mode we cannot convert."""
