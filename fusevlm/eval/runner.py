"""``fusevlm eval``: ask a model a benchmark's questions, write the official answers file, score it.

What one benchmark run leaves in ``out``::

    <benchmark>.partial.jsonl          raw answers as they are generated (one JSON line each; resume reads it)
    <benchmark>.partial.rank<R>.jsonl  the same, one file per rank, under torchrun
    <answers file>                     the benchmark's submission format (see ANSWERS_FILES)
    scores.json, scores.md             the scorer's result, and a Markdown table

The questions and prompts come from :func:`fusevlm.eval.scoring.load_questions` (LLaVA-1.5's prompts), the
answers from :func:`fusevlm.eval.generate.generate_answers` (greedy, left-padded batches through the
processor's one encoding path), the files and numbers from :mod:`fusevlm.eval.scoring`.

Resume: answers are appended to the partial file after every batch, so a run killed half-way continues
where it stopped; only the questions without an answer are generated again. Data parallel: under
``torchrun`` every rank answers a strided shard of the questions still open, and rank 0 merges all partial
files in question order, writes the answers file and scores it.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from .generate import Prompt, generate_answers
from .scoring import SCORERS, format_table, load_questions, score, write_answers

DEFAULT_MAX_NEW_TOKENS = 128  # LLaVA-1.5's eval scripts; a short answer stops far earlier at EOS

# The submission file each benchmark's server or official script takes (MME's is a folder of .txt files;
# MMBench's sheet also gets an .xlsx twin when openpyxl is installed, the format the server wants).
ANSWERS_FILES: dict[str, str] = {
    "vqav2": "vqav2_answers.json",
    "textvqa": "textvqa_answers.json",
    "vizwiz": "vizwiz_answers.json",
    "gqa": "gqa_answers.json",
    "mmbench": "mmbench_submission.tsv",
    "mmbench_cn": "mmbench_cn_submission.tsv",
    "scienceqa": "scienceqa_answers.jsonl",
    "pope": "pope_answers.jsonl",
    "mme": "mme_results",
}

# Checked before any generation, so a typo costs seconds rather than a whole run.
RULE_SETS: dict[str, tuple[str, ...]] = {name: ("official",) for name in SCORERS}
RULE_SETS.update({name: ("official", "evalai") for name in ("vqav2", "textvqa", "vizwiz")})
RULE_SETS.update({name: ("official", "verbose") for name in ("mmbench", "mmbench_cn")})

PARTIAL_FORMAT = 1


class EvalError(ValueError):
    """An evaluation cannot run: unknown benchmark, missing image, a partial file from another run..."""


# ----------------------------------------------------------------------------------------------
# processes


@dataclass(frozen=True)
class Rank:
    """This process's place in a data-parallel run (rank 0 of 1 outside torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if self.world == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]


@contextmanager
def distributed() -> Iterator[Rank]:
    """The process group torchrun describes (WORLD_SIZE > 1), created here unless it already exists.

    NCCL on GPUs, gloo on CPU. A group created here is destroyed on exit: without that a torchrun
    child sometimes aborts at interpreter exit (shared NOTES).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        yield Rank()
        return
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    created = not dist.is_initialized()
    if created:
        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    try:
        yield Rank(dist.get_rank(), dist.get_world_size(), local_rank)
    finally:
        if created:
            dist.destroy_process_group()


# ----------------------------------------------------------------------------------------------
# model


def load_model(
    model_dir: str | Path, device: str | torch.device | None = None, dtype: str | None = None
) -> tuple[Any, Any]:
    """A fusevlm model folder -> ``(model, processor)``, the model in eval mode on ``device``.

    ``device`` defaults to this process's GPU (``cuda:LOCAL_RANK``) when there is one, else the CPU;
    ``dtype`` (``float32`` | ``bfloat16`` | ``float16``) defaults to the dtype the folder was saved in.
    """
    from ..models.vlm import FuseVLMForConditionalGeneration
    from ..processing import FuseVLMProcessor

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise EvalError(f"{model_dir}: not a model folder (no config.json)")
    if device is None:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    kwargs = {"dtype": getattr(torch, dtype)} if dtype else {"dtype": "auto"}
    model = FuseVLMForConditionalGeneration.from_pretrained(model_dir, **kwargs).to(device).eval()
    return model, FuseVLMProcessor.from_pretrained(model_dir)


class LazyModel:
    """Loads the model on first use: a resumed run with nothing left to answer never loads it."""

    def __init__(self, model_dir: str | Path, dtype: str | None = None, device: str | None = None):
        self.model_dir = Path(model_dir)
        self.dtype = dtype
        self.device = device
        self._loaded: tuple[Any, Any] | None = None

    def get(self) -> tuple[Any, Any]:
        if self._loaded is None:
            self._loaded = load_model(self.model_dir, self.device, self.dtype)
        return self._loaded


# ----------------------------------------------------------------------------------------------
# questions -> prompts


def _inline_image(text: str) -> bytes | None:
    """The bytes of a base64-inlined image (MMBench-style TSVs), or None when ``text`` is not one.

    Short strings are never taken for base64: a path like ``"abcd"`` is valid base64 too.
    """
    if len(text) < 64 or len(text) < 4096 and Path(text).exists():
        return None
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


def open_image(image: Any, where: str = "image") -> Image.Image:
    """A PIL RGB image from a path, raw bytes or a base64 string; errors name ``where`` and the image."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, str):
        image = _inline_image(image) or image
    try:
        if isinstance(image, bytes | bytearray):
            return Image.open(io.BytesIO(image)).convert("RGB")
        path = Path(image)
        if not path.is_file():
            raise EvalError(f"{where}: image not found: {str(path)[:200]}")
        with Image.open(path) as img:
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError) as exc:
        shown = f"{len(image)} inline bytes" if isinstance(image, bytes | bytearray) else str(image)[:200]
        raise EvalError(f"{where}: cannot decode the image ({shown}): {exc}") from exc


def make_prompt(text: str, image: Any, image_token: str = "<image>", where: str = "image") -> Prompt:
    """One user turn as LLaVA-1.5 asks it: the image placeholder, a newline, then the benchmark's prompt."""
    return Prompt([{"role": "user", "content": f"{image_token}\n{text}"}], [open_image(image, where)])


def check_images(benchmark: str, questions: Sequence[dict[str, Any]]) -> None:
    """Fail before any generation when image files are missing, naming them (and how many)."""
    missing = [
        (q["question_id"], q["image"])
        for q in questions
        if isinstance(q["image"], Path) and not q["image"].is_file()
    ]
    if missing:
        listed = "; ".join(f"question {qid!r}: {path}" for qid, path in missing[:3])
        more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
        raise EvalError(
            f"{benchmark}: {len(missing)} of {len(questions)} images not found: {listed}{more} "
            f"- is --images the benchmark's image folder?"
        )


def _plain_id(qid: Any) -> Any:
    """A question id as JSON keeps it (numpy integers from pandas become ints)."""
    return qid.item() if hasattr(qid, "item") else qid


def _id_key(qid: Any) -> str:
    """Ids compared through their JSON text, so an id read back from a partial file matches the original."""
    return json.dumps(_plain_id(qid))


# ----------------------------------------------------------------------------------------------
# the partial answers file(s)


class PartialAnswers:
    """The append-only JSONL answers of one benchmark in ``out``: a header line, then one answer per line.

    The header records what produced the answers, so a resume with another model, benchmark or
    ``max_new_tokens`` is refused instead of mixing two runs. Each rank appends to its own file (no two
    processes write one file); reading takes every rank's file, from this run or an earlier one with
    another world size.
    """

    def __init__(self, out: Path, benchmark: str, header: dict[str, Any], rank: Rank):
        self.out = out
        self.benchmark = benchmark
        self.header = {"fusevlm_partial": PARTIAL_FORMAT, **header}
        suffix = "" if rank.world == 1 else f".rank{rank.rank}"
        self.path = out / f"{benchmark}.partial{suffix}.jsonl"

    def files(self) -> list[Path]:
        return sorted(self.out.glob(f"{self.benchmark}.partial*.jsonl"))

    def read(self, known: set[str]) -> dict[str, tuple[Any, str]]:
        """``id key -> (question id, answer)`` from every partial file; ids outside ``known`` are refused."""
        answers: dict[str, tuple[Any, str]] = {}
        for path in self.files():
            for qid, text in self._read_file(path):
                key = _id_key(qid)
                if key not in known:
                    raise EvalError(
                        f"{path}: question id {qid!r} is not in the given {self.benchmark} data - this "
                        f"partial file belongs to another data file; use another --out or delete it"
                    )
                answers.setdefault(key, (qid, text))
        return answers

    def _read_file(self, path: Path) -> Iterator[tuple[Any, str]]:
        lines = path.read_text(encoding="utf-8").split("\n")
        # The last piece is "" after a complete final line; anything else is a line torn by a kill
        # mid-write, whose question is simply answered again.
        for number, line in enumerate(lines[:-1], start=1):
            try:
                entry = json.loads(line)
            except json.JSONDecodeError as exc:
                raise EvalError(f"{path}: line {number}: malformed JSON ({exc.msg})") from exc
            if number == 1:
                self._check_header(path, entry)
            elif not isinstance(entry, dict) or "question_id" not in entry or "answer" not in entry:
                raise EvalError(f"{path}: line {number}: expected {{'question_id', 'answer'}}")
            else:
                yield entry["question_id"], str(entry["answer"])

    def _check_header(self, path: Path, entry: Any) -> None:
        if not isinstance(entry, dict) or "fusevlm_partial" not in entry:
            raise EvalError(f"{path}: line 1: not a fusevlm partial answers file (no header)")
        differs = {k: entry.get(k) for k, v in self.header.items() if entry.get(k) != v}
        if differs:
            found = ", ".join(f"{k}={v!r}" for k, v in differs.items())
            wanted = ", ".join(f"{k}={self.header[k]!r}" for k in differs)
            raise EvalError(
                f"{path}: holds answers of another run ({found}; this run: {wanted}); "
                f"use another --out or delete the file to start over"
            )

    @contextmanager
    def appender(self) -> Iterator[Any]:
        """This rank's file opened for appending, its torn last line (if any) cut off, the header written."""
        self.out.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            raw = self.path.read_bytes()
            if raw and not raw.endswith(b"\n"):
                with self.path.open("r+b") as f:
                    f.truncate(raw.rfind(b"\n") + 1)
        with self.path.open("a", encoding="utf-8") as f:
            if f.tell() == 0:
                f.write(json.dumps(self.header, ensure_ascii=False) + "\n")
                f.flush()
            yield f

    @staticmethod
    def write_batch(f: Any, qids: Sequence[Any], answers: Sequence[str]) -> None:
        """Append a batch and flush it, so a kill loses at most the batch being generated."""
        for qid, answer in zip(qids, answers, strict=True):
            f.write(json.dumps({"question_id": _plain_id(qid), "answer": answer}, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


# ----------------------------------------------------------------------------------------------
# one benchmark


@dataclass(frozen=True)
class Settings:
    limit: int | None = None
    batch_size: int = 16
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    rules: str = "official"
    progress: bool = True


def check_request(benchmark: str, rules: str, limit: int | None) -> None:
    """Refuse an unknown benchmark, rule set or limit before loading anything."""
    if benchmark not in SCORERS:
        raise EvalError(f"unknown benchmark {benchmark!r}; choose from {', '.join(SCORERS)}")
    if rules not in RULE_SETS[benchmark]:
        raise EvalError(
            f"{benchmark}: unknown rule set {rules!r}; choose from {', '.join(RULE_SETS[benchmark])}"
        )
    if limit is not None and limit < 1:
        raise EvalError(f"limit must be a positive number of questions, got {limit}")


def _answer_shard(
    holder: LazyModel,
    benchmark: str,
    questions: Sequence[dict[str, Any]],
    partial: PartialAnswers,
    settings: Settings,
    rank: Rank,
) -> None:
    """Generate this rank's questions in batches, appending each batch to the partial file."""
    if not questions:
        return
    model, processor = holder.get()
    batches = range(0, len(questions), settings.batch_size)
    with partial.appender() as f:
        for start in tqdm(batches, desc=f"{benchmark} (rank {rank.rank})" if rank.world > 1 else benchmark,
                          disable=not settings.progress or not rank.is_main):
            batch = questions[start : start + settings.batch_size]
            prompts = [
                make_prompt(q["prompt"], q["image"], processor.image_token, f"{benchmark} question {q['question_id']!r}")
                for q in batch
            ]
            answers = generate_answers(
                model, processor, prompts,
                batch_size=len(prompts), max_new_tokens=settings.max_new_tokens, progress=False,
            )
            partial.write_batch(f, [q["question_id"] for q in batch], answers)


def _finish(
    benchmark: str,
    data: Path,
    selected: Sequence[dict[str, Any]],
    answers: dict[str, tuple[Any, str]],
    out: Path,
    settings: Settings,
    model_dir: Path,
    n_questions: int,
) -> dict[str, Any]:
    """Rank 0: the answers in question order -> the official answers file -> scores.json and scores.md."""
    missing = [q["question_id"] for q in selected if _id_key(q["question_id"]) not in answers]
    if missing:  # every rank answered its shard before the barrier, so this is a bug or a lost file
        raise EvalError(f"{benchmark}: {len(missing)} questions have no answer after generation, e.g. {missing[:3]}")
    ordered = {q["question_id"]: answers[_id_key(q["question_id"])][1] for q in selected}
    path = write_answers(benchmark, ordered, out / ANSWERS_FILES[benchmark], data=data, rules=settings.rules)
    try:
        result = score(benchmark, data, path, rules=settings.rules)
    except ValueError as exc:  # e.g. a test split without ground truth: the file is still the one to submit
        raise EvalError(f"{benchmark}: wrote the answers file {path}, but cannot score it: {exc}") from exc
    result.update(model=str(model_dir), data=str(data), answers_file=str(path), limit=settings.limit,
                  n_asked=len(selected))
    # The scorer reads the file back on its own; a count that disagrees means the file lost answers.
    # (n_scored may be lower than n_asked in one case: MMBench's sheet cannot tell an empty answer from none.)
    if result["n_scored"] > len(selected) or result["n_total"] != n_questions:
        raise EvalError(
            f"{benchmark}: the scorer counted {result['n_scored']} of {result['n_total']} questions, "
            f"but {len(selected)} of {n_questions} were asked"
        )
    write_report(out, [result], result)
    return result


def _run_benchmark(
    holder: LazyModel,
    benchmark: str,
    data: str | Path,
    images: str | Path | None,
    out: Path,
    settings: Settings,
    rank: Rank,
) -> dict[str, Any]:
    data = Path(data)
    questions = load_questions(benchmark, data, images)
    selected = questions[: settings.limit] if settings.limit is not None else questions
    check_images(benchmark, selected)

    header = {"benchmark": benchmark, "model": str(holder.model_dir.resolve()),
              "max_new_tokens": settings.max_new_tokens}
    partial = PartialAnswers(out, benchmark, header, rank)
    known = {_id_key(q["question_id"]) for q in questions}
    done = partial.read(known)
    rank.barrier()  # every rank has read the same answers before any rank appends new ones
    pending = [q for q in selected if _id_key(q["question_id"]) not in done]
    _answer_shard(holder, benchmark, pending[rank.rank :: rank.world], partial, settings, rank)
    rank.barrier()  # all shards are on disk

    result = None
    if rank.is_main:
        result = _finish(benchmark, data, selected, partial.read(known), out, settings, holder.model_dir,
                         len(questions))
    return rank.broadcast(result)


# ----------------------------------------------------------------------------------------------
# reports


def report_notes(results: Sequence[dict[str, Any]]) -> list[str]:
    """One line per benchmark that says how many questions were scored, of how many, under which rules."""
    notes = []
    for r in results:
        line = f"- {r['benchmark']}: scored {r['n_scored']} of {r['n_total']} questions, {r['rules']} rules"
        if r.get("limit") and r["limit"] < r["n_total"]:
            line += f" (--limit {r['limit']})"
        if r.get("n_asked", r["n_scored"]) > r["n_scored"]:
            line += f"; {r['n_asked'] - r['n_scored']} empty answers read back as unanswered"
        if r["n_scored"] < r["n_total"]:
            line += "; unanswered questions count as wrong"
        notes.append(line)
    return notes


def render_report(results: Sequence[dict[str, Any]]) -> str:
    """The Markdown written to ``scores.md``: the score table, then the scored-of-total notes."""
    return format_table(results) + "\n" + "\n".join(report_notes(results)) + "\n"


def write_report(out: Path, results: Sequence[dict[str, Any]], payload: Any) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "scores.json").write_text(json.dumps(payload, indent=2, ensure_ascii=False, default=str) + "\n",
                                     encoding="utf-8")
    (out / "scores.md").write_text(render_report(results), encoding="utf-8")


# ----------------------------------------------------------------------------------------------
# public API


def evaluate(
    model_dir: str | Path,
    benchmark: str,
    data: str | Path,
    images: str | Path | None = None,
    *,
    out: str | Path,
    limit: int | None = None,
    batch_size: int = 16,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    rules: str = "official",
    dtype: str | None = None,
    device: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Answer ``benchmark``'s questions with the model in ``model_dir``, write the answers file and score it.

    ``data`` / ``images`` are what :func:`fusevlm.eval.scoring.load_questions` takes. ``limit`` answers
    only the first N questions; the result (and ``scores.md``) then say ``n_scored`` of ``n_total``.
    Returns the scorer's result dict (see :mod:`fusevlm.eval.scoring.result`) plus ``model``, ``data``,
    ``answers_file`` and ``limit``; under torchrun every rank returns it.
    """
    settings = Settings(limit, batch_size, max_new_tokens, rules, progress)
    check_request(benchmark, rules, limit)
    with distributed() as rank:
        holder = LazyModel(model_dir, dtype, device)
        return _run_benchmark(holder, benchmark, data, images, Path(out), settings, rank)


def evaluate_many(
    model_dir: str | Path,
    benchmarks: Sequence[tuple[str, str | Path, str | Path | None]],
    *,
    out: str | Path,
    limit: int | None = None,
    batch_size: int = 16,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    rules: str = "official",
    dtype: str | None = None,
    device: str | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Several ``(name, data, images)`` benchmarks with one model load: ``out/<name>/`` each, one table.

    ``out/scores.json`` holds ``{"model", "results": [...]}`` and ``out/scores.md`` the combined table.
    ``rules="evalai"`` (VQAv2, TextVQA, VizWiz) or ``"verbose"`` (MMBench) applies to the benchmarks that have that
    rule set; the others are scored with their official rules, and each result records the rules it used.
    """
    names = [name for name, _, _ in benchmarks]
    if len(set(names)) != len(names):
        raise EvalError(f"a benchmark is listed twice: {', '.join(names)}")
    known = sorted({r for sets in RULE_SETS.values() for r in sets})
    if rules not in known:
        raise EvalError(f"unknown rule set {rules!r}; choose from {', '.join(repr(r) for r in known)}")
    for name in names:  # all requests checked before the first (long) benchmark starts
        check_request(name, rules if rules in RULE_SETS.get(name, ()) else "official", limit)
    out = Path(out)
    results = []
    with distributed() as rank:
        holder = LazyModel(model_dir, dtype, device)
        for name, data, images in benchmarks:
            own_rules = rules if rules in RULE_SETS[name] else "official"
            settings = Settings(limit, batch_size, max_new_tokens, own_rules, progress)
            results.append(_run_benchmark(holder, name, data, images, out / name, settings, rank))
        if rank.is_main:
            write_report(out, results, {"model": str(model_dir), "results": results})
    return results
