"""The single exception type raised by the benchmark scorers."""

from __future__ import annotations


class ScoringError(ValueError):
    """A data or answers file cannot be scored.

    Raised for malformed files (the message names the file, the line or row and the field), for an
    answers file that belongs to another benchmark or split, for an unknown benchmark or rule set, and
    (with ``strict=True``) for an answers file that does not cover every question.
    """
