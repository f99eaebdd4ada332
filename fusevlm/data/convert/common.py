"""Shared pieces of the converters: errors, instruction templates, boxes, sampling and the run context.

Every converter turns one dataset's official release files into records of our conversation format:

    {"id": str, "image": "relative/path.jpg",
     "conversations": [{"from": "human", "value": "<image>\\n<instruction>"}, {"from": "gpt", "value": "..."}],
     "task": "ocr" | "caption" | "vqa" | "grounding" | "grounded_caption"}

Malformed input raises `ConvertError` (a `ValueError`) naming the file, the record and the field; records that
are well formed but unusable (an empty caption, a zero-area box, ...) are skipped and counted by reason.
"""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

T = TypeVar("T")

TASKS = ("ocr", "caption", "vqa", "grounding", "grounded_caption")
LANGS = ("en", "zh")
IMAGE_TOKEN = "<image>"


# ----------------------------------------------------------------------------------------------- errors


class ConvertError(ValueError):
    """A malformed input file. The message reads `FILE: record R: field 'F': what is wrong`."""

    def __init__(self, file: str | Path, message: str, *, record: int | str | None = None,
                 field: str | None = None) -> None:
        self.file = str(file)
        self.record = record
        self.field = field
        where = [self.file]
        if record is not None:
            where.append(f"record {record!r}")
        if field is not None:
            where.append(f"field {field!r}")
        super().__init__(": ".join(where) + ": " + message)


_NUMBER = (int, float)


@dataclass(frozen=True)
class Where:
    """Where a value comes from (file and record), so that checks can name it in their errors."""

    file: str | Path
    record: int | str | None = None

    def error(self, message: str, field: str | None = None) -> ConvertError:
        return ConvertError(self.file, message, record=self.record, field=field)

    def at(self, record: int | str) -> Where:
        return Where(self.file, record)

    def get(self, obj: Any, name: str, types: type | tuple[type, ...], *, optional: bool = False,
            label: str | None = None) -> Any:
        """`obj[name]`, checked to be an instance of `types` (bools are not numbers here).

        A missing key or a null value is an error unless `optional`, in which case it reads as None. Errors name
        the field `label` (default `name`; a dotted path such as `ground_truth.gt_parse` for nested values)."""
        label = label or name
        if not isinstance(obj, dict):
            parent = label.rsplit(".", 1)[0] if "." in label else None
            raise self.error(f"expected an object, got {type(obj).__name__}", parent)
        value = obj.get(name)
        if value is None:
            if optional:
                return None
            raise self.error("missing" if name not in obj else "is null", label)
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in _as_tuple(types)):
            raise self.error(f"expected {_type_names(types)}, got {type(value).__name__} ({value!r:.60})", label)
        return value

    def number(self, obj: Any, name: str, label: str | None = None) -> float | int:
        return self.get(obj, name, _NUMBER, label=label)


def _as_tuple(types: type | tuple[type, ...]) -> tuple[type, ...]:
    return types if isinstance(types, tuple) else (types,)


def _type_names(types: type | tuple[type, ...]) -> str:
    names = {int: "a number", float: "a number", str: "a string", list: "a list", dict: "an object"}
    return " or ".join(dict.fromkeys(names.get(t, t.__name__) for t in _as_tuple(types)))


def read_json(path: Path) -> Any:
    """Load a JSON file; a parse error names the file and the position."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ConvertError(path, f"not valid JSON (line {e.lineno}, column {e.colno}): {e.msg}") from e


def read_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    """Yield (line index, value) of a JSON-lines file, skipping blank lines."""
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f):
            if not line.strip():
                continue
            try:
                yield i, json.loads(line)
            except json.JSONDecodeError as e:
                raise ConvertError(path, f"not valid JSON: {e.msg}", record=i) from e


# -------------------------------------------------------------------------------------------- templates
# Several phrasings per kind of instruction; one is drawn per conversation with the seeded RNG.
# `{question}`, `{box}` and `{phrase}` are filled in by the converters.

TEMPLATES: dict[str, dict[str, list[str]]] = {
    "ocr": {
        "en": [
            "What text is written in this image? Transcribe it exactly.",
            "Read all the text in the image.",
            "Transcribe the text shown in this picture.",
            "Please output every word that appears in the image, in reading order.",
        ],
        "zh": [
            "请识别图中的所有文字。",
            "图片里写了什么？请把文字完整地抄写下来。",
            "读出这张图片中的文字内容。",
            "请按阅读顺序输出图像中出现的全部文本。",
        ],
    },
    "caption": {
        "en": [
            "Describe the image briefly.",
            "Write a short caption for this picture.",
            "Give a one-sentence description of the photo.",
            "What does this image show? Answer in one sentence.",
            "Summarize the content of the image in a few words.",
        ],
        "zh": [
            "请简要描述这张图片。",
            "为这张图片写一句简短的说明。",
            "用一句话概括图片的内容。",
            "这张图片展示了什么？请用一句话回答。",
        ],
    },
    "vqa": {
        "en": [
            "{question}",
            "{question}\nAnswer the question briefly.",
            "Look at the image and answer: {question}",
            "Question: {question}\nGive a short answer.",
        ],
        "zh": [
            "{question}",
            "{question}\n请简要回答。",
            "根据图片回答问题：{question}",
        ],
    },
    # grounding, box -> description (region captioning)
    "region_caption": {
        "en": [
            "Describe the region {box} in a short phrase.",
            "What is shown in the area {box} of the image?",
            "Give a brief description of the region {box}.",
        ],
        "zh": [
            "请用一句话描述区域{box}。",
            "图中区域{box}里是什么？",
            "简要描述图像中{box}处的内容。",
        ],
    },
    # grounding, description -> box (referring expression)
    "region_ground": {
        "en": [
            "Where is \"{phrase}\" in the image? Give its bounding box.",
            "Locate {phrase} in the image and output its box.",
            "Find the region described by \"{phrase}\" and answer with [x1, y1, x2, y2].",
        ],
        "zh": [
            "“{phrase}”在图中的什么位置？请给出边框。",
            "请定位{phrase}，并输出其边框坐标。",
            "找出“{phrase}”所在的区域，用[x1, y1, x2, y2]回答。",
        ],
    },
    "grounded_caption": {
        "en": [
            "Describe the objects in the image with their bounding boxes.",
            "List the objects you see, each followed by its box [x1, y1, x2, y2].",
            "Name every object in the picture and give its location as a box.",
        ],
        "zh": [
            "请描述图中的物体及其边框。",
            "列出图片中的物体，并在每个物体后给出边框坐标[x1, y1, x2, y2]。",
            "说出图中的每个物体，并用边框标出它的位置。",
        ],
    },
}


# ------------------------------------------------------------------------------------------------ boxes
# Boxes are written Qwen-VL style: `[x1, y1, x2, y2]`, each coordinate an integer in 0..999.
# Rule: v -> floor(v * 1000 / size), then clamped to [0, 999]; so an image's 1000 bins are [k/1000, (k+1)/1000)
# of its width (x) or height (y), and a box reaching the right or bottom edge ends at 999. A box that is empty
# after clamping (it lies outside the image, or is thinner than one bin) is dropped.

BOX_BINS = 1000


def normalize_box(x: float, y: float, w: float, h: float, width: float, height: float) -> list[int] | None:
    """Pixel box (x, y, w, h) in an image of `width` x `height` -> [x1, y1, x2, y2] in 0..999, or None if empty."""

    def scale(v: float, size: float) -> int:
        return min(BOX_BINS - 1, max(0, math.floor(v * BOX_BINS / size)))

    box = [scale(x, width), scale(y, height), scale(x + w, width), scale(y + h, height)]
    if box[2] <= box[0] or box[3] <= box[1]:
        return None
    return box


def format_box(box: list[int]) -> str:
    return "[" + ", ".join(str(v) for v in box) + "]"


# --------------------------------------------------------------------------------------------- records


def make_record(id: str, image: str, turns: list[tuple[str, str]], task: str) -> dict[str, Any]:
    """One conversation: `turns` are (human, gpt) pairs; `<image>` opens the first human turn only."""
    conversations = []
    for i, (human, gpt) in enumerate(turns):
        conversations.append({"from": "human", "value": f"{IMAGE_TOKEN}\n{human}" if i == 0 else human})
        conversations.append({"from": "gpt", "value": gpt})
    return {"id": id, "image": image, "conversations": conversations, "task": task}


def caption_record(id: str, image: str, caption: str, ctx: Context) -> dict[str, Any] | None:
    """A one-turn caption conversation, or None (counted as skipped) when the caption is empty."""
    ctx.read += 1
    caption = caption.strip()
    if not caption:
        ctx.skip("empty caption")
        return None
    return make_record(id, image, [(ctx.template("caption"), caption)], "caption")


def chunks(items: list[T], size: int) -> list[list[T]]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def url_name(url: str) -> str:
    """The file name at the end of a URL's path (no query): `http://h/a/b.jpg?x=1` -> `b.jpg`."""
    return Path(urlparse(url).path).name


def image_name(rule: str, *, index: int, url: str = "", stem: str = "") -> str:
    """Apply a user's file-name rule, a `str.format` pattern with the fields `index` (the record's 0-based
    row in its file), `url_name` (the last part of the image URL's path) and `stem` (the input file's stem)."""
    try:
        return rule.format(index=index, url_name=url_name(url), stem=stem)
    except (KeyError, IndexError, ValueError) as e:
        raise ValueError(f"bad --image-name rule {rule!r}: {e!r}; fields are index, url_name, stem") from e


# -------------------------------------------------------------------------------------------- sampling


def sample_indices(n: int, num_samples: int | None, rng: random.Random) -> list[tuple[int, int]]:
    """Choose `num_samples` of `n` records as (index, copy) pairs, in a deterministic order for one seed.

    None keeps all. Fewer than `n` draws without replacement (kept in source order). More than `n` repeats every
    record `num_samples // n` times and draws the rest without replacement; copy k > 0 becomes id `<id>#k`."""
    if num_samples is None:
        return [(i, 0) for i in range(n)]
    if num_samples < 0:
        raise ValueError(f"num_samples must be >= 0, got {num_samples}")
    if n == 0:
        return []
    if num_samples <= n:
        return [(i, 0) for i in sorted(rng.sample(range(n), num_samples))]
    full, rest = divmod(num_samples, n)
    picked = [(i, k) for k in range(full) for i in range(n)]
    picked += [(i, full) for i in sorted(rng.sample(range(n), rest))]
    return picked


# --------------------------------------------------------------------------------------------- context


@dataclass
class Context:
    """What a converter gets besides its input files: options, the template RNG, and counters."""

    source: str
    lang: str | None = None  # None: the converter decides (synthdog detects it; the others use "en")
    split: str | None = None
    image_name: str = "{index:09d}.jpg"
    max_turns: int = 10
    image_dir: Path | None = None
    rng: random.Random = field(default_factory=lambda: random.Random(0))
    show_progress: bool = False
    # filled in by the converter
    unit: str = "records"  # what `read` counts
    read: int = 0
    skipped: Counter = field(default_factory=Counter)
    extra: dict[str, Any] = field(default_factory=dict)  # converter-specific counts for the stats
    after_sampling: list[Callable[[list[dict[str, Any]]], None]] = field(default_factory=list)

    def skip(self, reason: str, n: int = 1) -> None:
        if n:
            self.skipped[reason] += n

    def template(self, kind: str) -> str:
        """Draw one phrasing of instruction `kind` in the run's language."""
        return self.rng.choice(TEMPLATES[kind][self.lang or "en"])

    def progress(self, iterable: Iterable[T], total: int | None = None, desc: str | None = None) -> Iterable[T]:
        """Wrap in a tqdm bar when progress is on and the input is large (or of unknown size)."""
        if not self.show_progress or (total is not None and total < 1000):
            return iterable
        try:
            from tqdm.auto import tqdm
        except ImportError:  # tqdm is a dependency, but a bar is never worth a crash
            return iterable
        return tqdm(iterable, total=total, desc=desc or self.source, unit=self.unit, leave=False)


def expand_inputs(inputs: Iterable[str | Path], suffixes: tuple[str, ...]) -> list[Path]:
    """Input paths as given; a directory stands for its files with one of `suffixes` (sorted)."""
    paths: list[Path] = []
    for p in map(Path, inputs):
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and f.name.endswith(suffixes))
            if not found:
                raise ConvertError(p, f"directory holds no {'/'.join(suffixes)} files")
            paths.extend(found)
        elif p.is_file():
            paths.append(p)
        else:
            raise ConvertError(p, "no such file or directory")
    if not paths:
        raise ValueError("no input files given")
    return paths
