"""Reading benchmark data and answers files with errors that point at the file, line and field.

Every reader here raises :class:`ScoringError` (never a bare ``json.JSONDecodeError`` or ``KeyError``),
and the message always starts with the file path so a user can open the file at the right place.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ScoringError


@dataclass(frozen=True)
class Record:
    """One entry of an answers file together with where it came from (1-based line number)."""

    line: int
    value: Any


def _read_text(path: Path) -> str:
    if not path.exists():
        raise ScoringError(f"{path}: file not found")
    if path.is_dir():
        raise ScoringError(f"{path}: expected a file, found a directory")
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ScoringError(f"{path}: not UTF-8 text (byte {exc.start}): {exc.reason}") from exc


def _decode_error(path: Path, exc: json.JSONDecodeError, line_offset: int = 0) -> ScoringError:
    return ScoringError(
        f"{path}: line {exc.lineno + line_offset}, column {exc.colno}: malformed JSON ({exc.msg})"
    )


def read_json(path: str | Path) -> Any:
    """Parse a whole JSON file; a syntax error names the file, line and column."""
    path = Path(path)
    text = _read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise _decode_error(path, exc) from exc


def _iter_array(path: Path, text: str) -> Iterator[Record]:
    """Decode a top-level JSON array element by element, remembering the line each element starts on."""
    decoder = json.JSONDecoder()
    n = len(text)
    pos = 0
    line = 1

    def skip_ws(i: int) -> int:
        while i < n and text[i] in " \t\r\n":
            i += 1
        return i

    def advance(to: int) -> None:
        nonlocal pos, line
        line += text.count("\n", pos, to)
        pos = to

    advance(skip_ws(0) + 1)  # past '['
    advance(skip_ws(pos))
    if pos < n and text[pos] == "]":
        advance(skip_ws(pos + 1))
        if pos != n:
            raise ScoringError(f"{path}: line {line}: unexpected data after the end of the JSON array")
        return
    while True:
        try:
            value, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise _decode_error(path, exc) from exc
        yield Record(line, value)
        advance(skip_ws(end))
        if pos >= n:
            raise ScoringError(f"{path}: line {line}: JSON array is not closed (missing ']')")
        if text[pos] == ",":
            advance(skip_ws(pos + 1))
            continue
        if text[pos] == "]":
            advance(skip_ws(pos + 1))
            if pos != n:
                raise ScoringError(f"{path}: line {line}: unexpected data after the end of the JSON array")
            return
        col = pos - text.rfind("\n", 0, pos)
        raise ScoringError(f"{path}: line {line}, column {col}: malformed JSON (expected ',' or ']')")


def read_records(path: str | Path) -> list[Record]:
    """Read an answers file that is either a JSON array or JSON Lines (one object per line).

    Each returned :class:`Record` carries the line its entry starts on, so later field checks can
    point at it. A JSON object at the top level (for example a benchmark's data file passed by
    mistake) is refused with the object's keys in the message.
    """
    path = Path(path)
    text = _read_text(path)
    stripped = text.lstrip()
    if not stripped:
        raise ScoringError(f"{path}: file is empty")
    if stripped[0] == "[":
        return list(_iter_array(path, text))
    if stripped[0] == "{":
        try:
            whole = json.loads(text)
        except json.JSONDecodeError:
            whole = None
        if isinstance(whole, dict) and "\n" in text.strip():
            keys = ", ".join(sorted(map(str, whole))[:8])
            raise ScoringError(
                f"{path}: expected a list of answers (JSON array or JSON Lines), found one JSON object "
                f"with keys [{keys}] - is this a benchmark data file rather than an answers file?"
            )
    records = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            records.append(Record(lineno, json.loads(raw)))
        except json.JSONDecodeError as exc:
            raise _decode_error(path, exc, line_offset=lineno - 1) from exc
    return records


def read_text_lines(path: str | Path) -> list[str]:
    """Return the lines of a UTF-8 text file without their line endings."""
    path = Path(path)
    return _read_text(path).splitlines()


def require_fields(
    path: Path, line: int, entry: Any, fields: Iterable[str], what: str = "entry"
) -> dict[str, Any]:
    """Check that ``entry`` is a JSON object holding ``fields``; name file, line and field otherwise."""
    if not isinstance(entry, dict):
        raise ScoringError(f"{path}: line {line}: {what} is a {type(entry).__name__}, expected a JSON object")
    for field in fields:
        if field not in entry:
            have = ", ".join(sorted(map(str, entry))[:8])
            raise ScoringError(f"{path}: line {line}: {what} has no field '{field}' (fields: {have})")
    return entry


def require_str(path: Path, line: int, entry: dict[str, Any], field: str) -> str:
    """Return ``entry[field]`` if it is a string; otherwise name the file, line and field."""
    value = entry.get(field)
    if not isinstance(value, str):
        raise ScoringError(
            f"{path}: line {line}: field '{field}' must be a string, got {type(value).__name__}"
        )
    return value
