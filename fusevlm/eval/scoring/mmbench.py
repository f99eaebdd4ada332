"""MMBench / MMBench-CN with CircularEval and rule-based choice extraction.

Data: the official TSV (``index, question, hint, A, B, C, D, answer, category, l2-category, image``
and sometimes ``E``, ``source``, ``split``, ``comment``). Empty or NaN option cells mean the option
is absent. The TSV holds every circular copy of a question (options rotated, ``answer`` adjusted);
copies share ``index % 1_000_000``.

CircularEval: a question counts as correct only if the answer extracted from *every* copy equals that
copy's ``answer``. A missing or unresolved answer for any copy makes the question wrong. The score and
the per-``category`` / per-``l2-category`` splits are means over questions (groups of copies); the
category is taken from the original copy (``index < 1_000_000``).

Answers: LLaVA's ``model_vqa_mmbench`` JSON Lines (``{"question_id": index, "text": ...}``) or a
submission sheet (``.tsv``/``.csv``/``.xlsx`` with ``index`` and ``prediction`` columns).
Extraction rules: :mod:`fusevlm.eval.scoring.choice` (VLMEvalKit v0.2's); ``rules="verbose"`` adds the article
rule VLMEvalKit applies when its ``VERBOSE`` environment variable is set.
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any

from .choice import extract_choice
from .errors import ScoringError
from .files import Record, read_records
from .result import as_int_id, build_result, check_rules, collect_answers, find_missing, pct

CIRCULAR_BASE = 1_000_000
REQUIRED_COLUMNS = ("index", "question")
SHEET_SUFFIXES = (".tsv", ".csv", ".xlsx")
RULES = ("official", "verbose")


def _pandas() -> Any:
    import pandas as pd

    return pd


def is_absent(value: Any) -> bool:
    """An empty/NaN cell (pandas already turns ``""``, ``"nan"``, ``"None"`` ... into NaN)."""
    pd = _pandas()
    if value is None:
        return True
    try:
        if pd.isna(value):
            return True
    except (TypeError, ValueError):
        return False
    return isinstance(value, str) and value.strip() == ""


def read_table(path: str | Path, literal: bool = False) -> Any:
    """Read a TSV (default), CSV or XLSX file into a DataFrame; errors name the file.

    By default pandas' NaN spellings (``"NA"``, ``"None"``, ...) become NaN, as in VLMEvalKit's
    reading of the data TSV; ``literal=True`` keeps them as text and treats only empty cells as NaN
    (used for model predictions).
    """
    pd = _pandas()
    path = Path(path)
    if not path.is_file():
        raise ScoringError(f"{path}: file not found")
    na = {"keep_default_na": False, "na_values": [""]} if literal else {}
    try:
        if path.suffix.lower() == ".xlsx":
            return pd.read_excel(path, **na)
        return pd.read_csv(path, sep="," if path.suffix.lower() == ".csv" else "\t", **na)
    except ImportError as exc:
        raise ScoringError(f"{path}: reading .xlsx needs openpyxl ({exc})") from exc
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise ScoringError(f"{path}: malformed table: {exc}") from exc


def option_letters(df: Any) -> list[str]:
    """The option columns of the sheet: single upper-case letters, in order."""
    return [c for c in string.ascii_uppercase if c in df.columns]


def row_options(row: Any, letters: list[str], stop_at_gap: bool = False) -> dict[str, str]:
    """Letter -> option text for the options present in ``row``.

    VLMEvalKit's scorer uses every non-empty option cell; LLaVA's prompt builder stops at the first
    empty one (``stop_at_gap=True``). The two only differ for a sheet with a gap (A, B, -, D).
    """
    options = {}
    for letter in letters:
        if is_absent(row[letter]):
            if stop_at_gap:
                break
            continue
        options[letter] = str(row[letter])
    return options


def load_mmbench(data: str | Path, need_answers: bool = True) -> tuple[Any, list[str]]:
    """The MMBench TSV as a DataFrame with an integer ``index`` column, plus its option letters.

    Checks (errors name file, row and field): required columns, integer and unique ``index``, at least
    two options per row and, when ``need_answers``, an ``answer`` that is one of the row's options.
    """
    path = Path(data)
    df = read_table(path)
    for col in REQUIRED_COLUMNS + (("answer",) if need_answers else ()):
        if col not in df.columns:
            extra = (
                " (test split? it has no ground truth and can only be submitted)" if col == "answer" else ""
            )
            raise ScoringError(
                f"{path}: no column '{col}'{extra}; columns: {', '.join(map(str, df.columns))}"
            )
    letters = option_letters(df)
    if len(letters) < 2:
        raise ScoringError(f"{path}: expected option columns 'A', 'B', ...; found {letters}")
    indices = []
    seen: dict[int, int] = {}
    for i, raw in enumerate(df["index"].tolist()):
        line = i + 2  # header is line 1
        idx = as_int_id(raw)
        if not isinstance(idx, int):
            raise ScoringError(f"{path}: row {line}: field 'index' is not an integer: {raw!r}")
        if idx in seen:
            raise ScoringError(f"{path}: row {line}: duplicate index {idx} (first on row {seen[idx]})")
        seen[idx] = line
        indices.append(idx)
    df = df.assign(index=indices)
    for i, row in enumerate(df.to_dict("records")):
        options = row_options(row, letters)
        if len(options) < 2:
            raise ScoringError(f"{path}: row {i + 2} (index {row['index']}): fewer than two options")
        if need_answers:
            gt = row["answer"]
            if is_absent(gt):
                raise ScoringError(f"{path}: row {i + 2} (index {row['index']}): field 'answer' is empty")
            if str(gt).strip() not in options:
                raise ScoringError(
                    f"{path}: row {i + 2} (index {row['index']}): field 'answer' is {gt!r}, not one of the "
                    f"row's options {sorted(options)}"
                )
    return df, letters


def _sheet_records(path: Path) -> list[Record]:
    df = read_table(path, literal=True)
    for col in ("index", "prediction"):
        if col not in df.columns:
            raise ScoringError(f"{path}: submission sheet has no column '{col}'")
    records = []
    for i, (idx, pred) in enumerate(zip(df["index"], df["prediction"], strict=True)):
        if not is_absent(pred):  # an empty cell is an unanswered question
            records.append(Record(i + 2, {"question_id": idx, "text": str(pred)}))
    return records


def read_mmbench_answers(path: Path) -> list[Record]:
    """Answer records from a LLaVA JSON Lines file or a submission sheet."""
    if path.suffix.lower() in SHEET_SUFFIXES:
        return _sheet_records(path)
    return read_records(path)


def score_mmbench(
    data: str | Path,
    answers: str | Path,
    rules: str = "official",
    strict: bool = False,
    benchmark: str = "mmbench",
) -> dict[str, Any]:
    """CircularEval accuracy of an answers file on an MMBench(-CN) TSV; see the module docstring."""
    check_rules(benchmark, rules, RULES)
    answers_path = Path(answers)
    df, letters = load_mmbench(data)
    rows = df.to_dict("records")
    by_index = {row["index"]: row for row in rows}
    preds = collect_answers(
        answers_path,
        read_mmbench_answers(answers_path),
        benchmark=benchmark,
        id_field="question_id",
        text_field="text",
        known_ids=by_index.keys(),
        normalize_id=as_int_id,
    )
    missing = find_missing(answers_path, by_index.keys(), preds, strict)

    unresolved: list[dict[str, Any]] = []
    groups: dict[int, list[bool]] = {}
    for row in rows:
        idx = row["index"]
        hit = False
        if idx in preds:
            choice = extract_choice(preds[idx], row_options(row, letters), article_rule=rules == "verbose")
            if choice.letter is None or choice.letter == "Z":
                unresolved.append({"question_id": idx, "prediction": preds[idx], "reason": choice.how})
            hit = choice.letter == str(row["answer"]).strip()
        groups.setdefault(idx % CIRCULAR_BASE, []).append(hit)

    group_hit = {g: all(hits) for g, hits in groups.items()}
    per: dict[str, dict[str, list[bool]]] = {}
    for g, hit in group_hit.items():
        main = by_index.get(g) or next(r for r in rows if r["index"] % CIRCULAR_BASE == g)
        for col in ("category", "l2-category"):
            if col in main and not is_absent(main[col]):
                per.setdefault(col, {}).setdefault(str(main[col]), []).append(hit)
    splits = {
        col: {label: {"score": pct(sum(v), len(v)), "n_total": len(v)} for label, v in sorted(labels.items())}
        for col, labels in per.items()
    }
    return build_result(
        benchmark=benchmark,
        metric="CircularEval accuracy",
        score=pct(sum(group_hit.values()), len(group_hit)),
        n_scored=len(preds),
        n_total=len(rows),
        splits=splits,
        unresolved=unresolved,
        missing=missing,
        n_questions=len(group_hit),
        rules=rules,
    )


def score_mmbench_cn(
    data: str | Path, answers: str | Path, rules: str = "official", strict: bool = False
) -> dict[str, Any]:
    """:func:`score_mmbench` for the Chinese TSV (same rules)."""
    return score_mmbench(data, answers, rules=rules, strict=strict, benchmark="mmbench_cn")


def have_openpyxl() -> bool:
    """Whether pandas can write ``.xlsx`` here."""
    try:
        import openpyxl  # noqa: F401
    except ImportError:
        return False
    return True


def write_submission_sheet(
    data: str | Path, predictions: dict[Any, str], path: str | Path, also_xlsx: bool = True
) -> Path:
    """Write the MMBench submission sheet: every TSV column except ``image``, plus ``prediction``.

    The format follows ``path``'s suffix: ``.xlsx`` (needs openpyxl), ``.csv``, otherwise TSV. With
    ``also_xlsx`` and openpyxl installed, a ``.tsv``/``.csv`` sheet gets an ``.xlsx`` twin (the
    format the MMBench server takes). Questions without a prediction get an empty cell.
    """
    df, _ = load_mmbench(data, need_answers=False)
    df = df.drop(columns=[c for c in ("image",) if c in df.columns])
    df["prediction"] = [predictions.get(idx, "") for idx in df["index"]]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower()
    if suffix == ".xlsx":
        try:
            df.to_excel(path, index=False)
        except ImportError as exc:
            raise ScoringError(f"{path}: writing .xlsx needs openpyxl; use a .tsv or .csv name") from exc
    else:
        df.to_csv(path, sep="," if suffix == ".csv" else "\t", index=False)
        if also_xlsx and have_openpyxl():
            df.to_excel(path.with_suffix(".xlsx"), index=False)
    return path
