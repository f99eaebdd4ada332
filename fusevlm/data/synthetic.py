"""A seeded synthetic multimodal dataset that a tiny VLM can learn on CPU in minutes (used by `fusevlm demo`).

The mixture mirrors the seed's (CodeFuse-VLM: captions, VQA, OCR, grounding) on clean 64 px pictures:

| task        | question (one of three phrasings)           | answer                         | blind chance |
| ----------- | ------------------------------------------- | ------------------------------ | ------------ |
| `caption`   | "Describe the image briefly."               | "a red circle"                 | 1/36         |
| `color`     | "What color is the object at the top left?" | "red"                          | 1/6          |
| `shape`     | "What shape is the red object?"             | "circle"                       | 1/6          |
| `position`  | "Where is the red object?"                  | "top left"                     | 1/4          |
| `count`     | "How many shapes are there?"                | "2"                            | 1/3          |
| `ocr`       | "What word is written?"                     | "cat"                          | 1/8          |
| `grounding` | "Give the box of the red circle."           | "[0, 1, 3, 4]"                 | 1/20         |
| `region`    | "What is at [0, 1, 3, 4]?"                  | "red circle"                   | 1/36         |

Design choices that make it learnable and honest:
- A question is about a scene's only object; `count` scenes hold 1-3 objects (`SCENE_SIZES`), each in its own
  quadrant, with distinct colours and shapes. Objects are drawn without anti-aliasing in saturated colours on
  white. Why one object: picking one of several objects by a word of the question ("the red one") takes the
  LLM a two-hop circuit (find the word, then the image token that matches it). A from-scratch 3-layer LLM did
  not form it within the demo's minutes: on 1-3 object scenes it named a random object of the scene for 1500
  steps, even with the question cut to the colour word (measured; a probe whose query *is* the colour
  embedding learns the same binding in 150 steps).
- Boxes are integers on a 0..8 grid (`GRID`); a box covers pixels `round(c * size / GRID)` and the shape fills it
  (up to a small random margin), so a box answer is exact and checkable. Objects of neighbouring quadrants can
  meet at the quadrant border, never overlap, and always differ in colour.
- A grid unit is one patch of the demo's ViT (8 px at 64 px), so an outline starts on a patch border, give or
  take the margin. On a 0..9 grid (7.1 px units) every patch cut the shapes at another offset, and the demo's
  from-scratch tower reached 0.74 on shape questions in 1875 steps; on patch units, 0.98 by step 1125 and 1.00
  by 1500, over two seeds (measured on the demo's model and data). Shape was the one skill it held back.
- One skill per task: `color` and `position` never wait on shape recognition (the slowest skill for a model
  trained from scratch); `shape`, `region` and `caption` test it.
  OCR words sit near the centre (shifted by up to 1/8 of the image) in one of three dark inks.
- Each task's answers are balanced (every answer value as often as possible, in shuffled order) and the
  question never carries information about the answer, so a model that ignores the image stays at chance.
  "Blind chance" is the best exact-match accuracy without the image: 1 / (number of equally likely answers).
- Images are generated per split; an eval image whose pixels equal any training image's is re-drawn, so the
  held-out split shares neither files nor pixel content with `align`/`train`.

Records are LLaVA conversations plus two extra keys: `task`, and `objects` (the scene's ground truth, for
analysis and tests; model code reads only `image` and `conversations`).
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont, features

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (230, 25, 25),
    "green": (20, 160, 40),
    "blue": (30, 70, 235),
    "yellow": (245, 210, 0),
    "purple": (145, 40, 190),
    "orange": (255, 130, 0),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "cross", "star")
WORDS: tuple[str, ...] = ("cat", "dog", "sun", "cup", "hat", "key", "pen", "box")
# Quadrants in reading order; captions list objects in this order so a caption is a function of the image.
POSITIONS: tuple[str, ...] = ("top left", "top right", "bottom left", "bottom right")
COUNTS: tuple[str, ...] = ("1", "2", "3")
SCENE_SIZES: dict[str, list[int]] = {"count": [1, 2, 3]}  # objects in a scene, balanced; other tasks: 1
GRID = 8  # box coordinates are ints in 0..GRID; a unit is one 8 px patch at the demo's 64 px
BACKGROUND = (255, 255, 255)
INKS: tuple[tuple[int, int, int], ...] = ((0, 0, 0), (60, 60, 60), (20, 20, 90))  # dark: never a vocab colour
IMAGE_TOKEN = "<image>"

TASKS: tuple[str, ...] = ("caption", "color", "shape", "position", "count", "ocr", "grounding", "region")
ALIGN_TASKS: tuple[str, ...] = ("caption",)

QUESTIONS: dict[str, tuple[str, ...]] = {
    "caption": (
        "Describe the image briefly.",
        "Write a short caption for the image.",
        "What does the image show?",
    ),
    "color": (
        "What color is the object at the {position}?",
        "Which color does the {position} object have?",
        "Tell me the color of the shape in the {position}.",
    ),
    "shape": (
        "What shape is the {color} object?",
        "Which shape is {color}?",
        "Name the shape of the {color} object.",
    ),
    "position": (
        "Where is the {color} object?",
        "In which part of the image is the {color} shape?",
        "Where is the {color} shape located?",
    ),
    "count": ("How many shapes are there?", "How many objects are in the image?", "Count the shapes."),
    "ocr": ("What word is written?", "What does the text say?", "Read the word in the image."),
    "grounding": (
        "Give the box of the {color} {shape}.",
        "Locate the {color} {shape}.",
        "Find the {color} {shape} and answer with its box.",
    ),
    "region": ("What is at {box}?", "What object is in the region {box}?", "Name the object at {box}."),
}

Box = tuple[int, int, int, int]


# ----------------------------------------------------------------------------------------------------------
# Geometry


def _half_spans() -> tuple[tuple[int, int], tuple[int, int]]:
    """Grid spans of the low and high half of an axis (they share the middle line)."""
    mid = GRID // 2
    return (0, mid), (mid, GRID)


def quadrant_boxes(position: str) -> list[Box]:
    """All boxes an object in `position` may occupy: squares of side 3 or 4 grid units inside the quadrant."""
    row, col = divmod(POSITIONS.index(position), 2)
    (y_lo, y_hi), (x_lo, x_hi) = _half_spans()[row], _half_spans()[col]
    boxes = []
    for side in (3, 4):
        for y0 in range(y_lo, y_hi - side + 1):
            for x0 in range(x_lo, x_hi - side + 1):
                boxes.append((x0, y0, x0 + side, y0 + side))
    return boxes


def box_to_pixels(box: Sequence[int], image_size: int) -> Box:
    """Grid box -> pixel box (x0, y0, x1, y1) with exclusive ends."""
    x0, y0, x1, y1 = (round(c * image_size / GRID) for c in box)
    return x0, y0, x1, y1


def format_box(box: Sequence[int]) -> str:
    return "[" + ", ".join(str(int(c)) for c in box) + "]"


_BOX_RE = re.compile(r"\[\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*\]")


def parse_box(text: str) -> Box | None:
    """The first "[x0, y0, x1, y1]" in `text`, or None."""
    m = _BOX_RE.search(text)
    return tuple(int(g) for g in m.groups()) if m else None  # type: ignore[return-value]


# ----------------------------------------------------------------------------------------------------------
# Rendering


def _shape_polygon(shape: str, x0: int, y0: int, x1: int, y1: int) -> list[tuple[float, float]]:
    cx, cy, w, h = (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0
    if shape == "triangle":
        return [(cx, y0), (x1, y1), (x0, y1)]
    if shape == "diamond":
        return [(cx, y0), (x1, cy), (cx, y1), (x0, cy)]
    if shape == "star":
        # Five points; radii chosen so the star spans its box, the fat inner radius keeps it solid at 20 px.
        rx, ry = 0.5 * w / math.sin(2 * math.pi / 5), h / (1 + math.cos(math.pi / 5))
        points = []
        for i in range(10):
            r = 1.0 if i % 2 == 0 else 0.45
            a = -math.pi / 2 + i * math.pi / 5
            points.append((cx + r * rx * math.cos(a), y0 + ry + r * ry * math.sin(a)))
        return points
    raise ValueError(f"no polygon for shape {shape!r}")


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, color: tuple[int, int, int], box: Box) -> None:
    # PIL's rectangle/ellipse include their end coordinate; our pixel boxes exclude it.
    x0, y0, x1, y1 = box[0], box[1], box[2] - 1, box[3] - 1
    if shape == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=color)
    elif shape == "square":
        draw.rectangle((x0, y0, x1, y1), fill=color)
    elif shape == "cross":
        t = max(1, round((x1 - x0) / 6))  # half thickness of the bars: a third of the side
        cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
        draw.rectangle((cx - t, y0, cx + t, y1), fill=color)
        draw.rectangle((x0, cy - t, x1, cy + t), fill=color)
    else:
        draw.polygon(_shape_polygon(shape, x0, y0, x1, y1), fill=color)


def jitter_boxes(objects: Sequence[dict], image_size: int, rng: random.Random) -> None:
    """Set each object's `pixel_box`: its grid box in pixels, shrunk by a random 0..image_size//32 px per side.

    The margin gives pixel-level variety (so splits rarely collide) without moving a box's centre off the shape.
    """
    jitter = image_size // 32
    for obj in objects:
        x0, y0, x1, y1 = box_to_pixels(obj["box"], image_size)
        m = [rng.randint(0, jitter) for _ in range(4)]
        obj["pixel_box"] = [x0 + m[0], y0 + m[1], x1 - m[2], y1 - m[3]]


def render_scene(objects: Sequence[dict], image_size: int) -> Image.Image:
    """Draw each object in its `pixel_box` (its whole grid box when it has none) on the background."""
    image = Image.new("RGB", (image_size, image_size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for obj in objects:
        box = obj.get("pixel_box") or box_to_pixels(obj["box"], image_size)
        _draw_shape(draw, obj["shape"], COLORS[obj["color"]], tuple(box))
    return image


def _font(image_size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    # Pillow's bundled font needs FreeType for sizes; without it we fall back to the bitmap font (see render_word).
    if features.check("freetype2"):
        return ImageFont.load_default(size=max(8, round(image_size * 0.34)))
    return ImageFont.load_default()


def _word_canvas(image_size: int) -> tuple[int, int]:
    """(canvas size, upscale factor): the bitmap fallback font is drawn small, then upscaled with NEAREST."""
    if features.check("freetype2"):
        return image_size, 1
    scale = max(1, image_size // 24)
    return image_size // scale, scale


def word_extent(word: str, image_size: int) -> tuple[int, int]:
    """Ink width and height of `word` on the canvas that render_word draws on."""
    left, top, right, bottom = ImageDraw.Draw(Image.new("RGB", (1, 1))).textbbox(
        (0, 0), word, font=_font(image_size)
    )
    return right - left, bottom - top


def render_word(word: str, xy: Sequence[int], image_size: int, ink: Sequence[int] = INKS[0]) -> Image.Image:
    """`word` in `ink` on white whose ink box starts at canvas position `xy` (deterministic given its arguments)."""
    canvas, scale = _word_canvas(image_size)
    font = _font(image_size)
    image = Image.new("RGB", (canvas, canvas), BACKGROUND)
    draw = ImageDraw.Draw(image)
    left, top, _, _ = draw.textbbox((0, 0), word, font=font)
    draw.text((xy[0] - left, xy[1] - top), word, fill=tuple(ink), font=font)
    if scale != 1:
        image = image.resize((image_size, image_size), Image.NEAREST)
    return image


# ----------------------------------------------------------------------------------------------------------
# Sampling


def _balanced(rng: random.Random, values: Sequence[Any], n: int) -> list[Any]:
    """n values, each value of `values` appearing floor(n/len) or ceil(n/len) times, in shuffled order.

    Exact balance (rather than i.i.d. draws) keeps the majority answer of a small eval split at chance.
    """
    out = list(values) * (n // len(values)) + rng.sample(list(values), n % len(values))
    rng.shuffle(out)
    return out


def _sample_scene(rng: random.Random, k: int, target: dict[str, Any]) -> tuple[dict, list[dict]]:
    """k objects with distinct colours, shapes and quadrants; the first honours `target` (color/shape/position/box).

    Returns (target object, all objects in reading order).
    """

    def pick(key: str, pool: Sequence[Any]) -> list[Any]:
        first = target[key] if key in target else rng.choice(pool)
        return [first] + rng.sample([v for v in pool if v != first], k - 1)

    if "box" in target:  # a box fixes the quadrant
        target = {
            **target,
            "position": next(p for p in POSITIONS if tuple(target["box"]) in quadrant_boxes(p)),
        }
    colors, shapes, positions = (
        pick("color", list(COLORS)),
        pick("shape", SHAPES),
        pick("position", POSITIONS),
    )
    objects = []
    for i, (color, shape, position) in enumerate(zip(colors, shapes, positions, strict=True)):
        box = target["box"] if i == 0 and "box" in target else rng.choice(quadrant_boxes(position))
        objects.append({"color": color, "shape": shape, "position": position, "box": list(box)})
    first = objects[0]
    objects.sort(key=lambda o: POSITIONS.index(o["position"]))
    return first, objects


def caption_of(objects: Sequence[dict]) -> str:
    """ "a red circle", "a red circle and an orange star", "a red circle, a blue star and a green cross"."""
    parts = [f"{'an' if o['color'][0] in 'aeiou' else 'a'} {o['color']} {o['shape']}" for o in objects]
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


# One builder per task: (rng, answer slot, number of objects, image size) -> (question fields, answer, objects).
# A builder puts the balanced answer slot into the scene (never reads the answer off a random scene), so answers
# stay balanced; the question fields name the target object by an attribute independent of the answer.
Built = tuple[dict[str, str], str, list[dict]]


def _build_caption(rng: random.Random, slot: Any, k: int, image_size: int) -> Built:
    color, shape = slot
    _, objects = _sample_scene(rng, k, {"color": color, "shape": shape})
    return {}, caption_of(objects), objects


def _build_color(rng: random.Random, slot: Any, k: int, image_size: int) -> Built:
    first, objects = _sample_scene(rng, k, {"color": slot})
    return {"position": first["position"]}, slot, objects


def _build_shape(rng: random.Random, slot: Any, k: int, image_size: int) -> Built:
    first, objects = _sample_scene(rng, k, {"shape": slot})
    return {"color": first["color"]}, slot, objects


def _build_position(rng: random.Random, slot: Any, k: int, image_size: int) -> Built:
    first, objects = _sample_scene(rng, k, {"position": slot})
    return {"color": first["color"]}, slot, objects


def _build_count(rng: random.Random, slot: Any, k: int, image_size: int) -> Built:
    _, objects = _sample_scene(rng, int(slot), {})
    return {}, slot, objects


def _build_grounding(rng: random.Random, slot: Any, k: int, image_size: int) -> Built:
    first, objects = _sample_scene(rng, k, {"box": slot})
    return {"color": first["color"], "shape": first["shape"]}, format_box(slot), objects


def _build_region(rng: random.Random, slot: Any, k: int, image_size: int) -> Built:
    color, shape = slot
    first, objects = _sample_scene(rng, k, {"color": color, "shape": shape})
    return {"box": format_box(first["box"])}, f"{color} {shape}", objects


def _build_ocr(rng: random.Random, slot: Any, k: int, image_size: int) -> Built:
    # Near the centre (+-1/8 of the image, one patch at 64 px with patch 8): a tiny model reads words much sooner
    # when they do not wander over the whole image; the shift and the ink shade keep images varied.
    canvas, _ = _word_canvas(image_size)
    w, h = word_extent(slot, image_size)
    shift = canvas // 8
    xy = []
    for extent in (w, h):
        centred = (canvas - extent) // 2
        xy.append(rng.randint(max(1, centred - shift), max(1, min(centred + shift, canvas - extent - 1))))
    return {}, slot, [{"word": slot, "xy": xy, "ink": rng.choice(INKS)}]


_BUILDERS: dict[str, Callable[[random.Random, Any, int, int], Built]] = {
    "caption": _build_caption,
    "color": _build_color,
    "shape": _build_shape,
    "position": _build_position,
    "count": _build_count,
    "ocr": _build_ocr,
    "grounding": _build_grounding,
    "region": _build_region,
}


def answer_space(task: str) -> list[Any]:
    """The balanced 'slots' of a task: its answers, or what determines them (caption: the object's colour and shape)."""
    spaces: dict[str, list[Any]] = {
        "caption": [(c, s) for c in COLORS for s in SHAPES],
        "color": list(COLORS),
        "shape": list(SHAPES),
        "position": list(POSITIONS),
        "count": list(COUNTS),
        "ocr": list(WORDS),
        "grounding": [b for p in POSITIONS for b in quadrant_boxes(p)],
        "region": [(c, s) for c in COLORS for s in SHAPES],
    }
    return spaces[task]


def blind_chance() -> dict[str, float]:
    """Best exact-match accuracy per task for a model that reads the question but not the image."""
    return {task: 1 / len(answer_space(task)) for task in TASKS}


# ----------------------------------------------------------------------------------------------------------
# Splits and files


def _render(task_objects: list[dict], image_size: int, rng: random.Random) -> Image.Image:
    if "word" in task_objects[0]:
        word = task_objects[0]
        return render_word(word["word"], word["xy"], image_size, word["ink"])
    jitter_boxes(task_objects, image_size, rng)
    return render_scene(task_objects, image_size)


def _build_split(
    split: str,
    tasks: Sequence[str],
    n: int,
    *,
    image_size: int,
    seed: int,
    images_dir: Path,
    seen: set[bytes],
    forbidden: set[bytes],
    max_retries: int = 200,
) -> tuple[list[dict], int]:
    """Generate n records of `split`, write their images, and return (records, redraws).

    `seen` collects the pixel hashes written here; an image whose hash is in `forbidden` is re-drawn (same task,
    same answer) so held-out images never repeat training pixels.
    """
    rng = random.Random(f"fusevlm-synthetic/{seed}/{split}")  # str seeds hash with sha512: stable across runs
    task_of = _balanced(rng, tasks, n)
    slots = {t: iter(_balanced(rng, answer_space(t), task_of.count(t))) for t in tasks}
    sizes = {t: iter(_balanced(rng, SCENE_SIZES.get(t, [1]), task_of.count(t))) for t in tasks}
    records, redraws = [], 0
    for i, task in enumerate(task_of):
        slot, k = next(slots[task]), next(sizes[task])
        for _attempt in range(max_retries + 1):
            fields, answer, objects = _BUILDERS[task](rng, slot, k, image_size)
            image = _render(objects, image_size, rng)
            digest = hashlib.sha1(image.tobytes()).digest()
            if digest not in forbidden:
                break
            redraws += 1
        else:
            raise RuntimeError(
                f"{split} record {i} ({task}, answer {slot!r}): no image unseen in training "
                f"after {max_retries} redraws; the scene space is too small for this size"
            )
        seen.add(digest)
        name = f"{split}_{i:06d}.png"
        image.save(images_dir / name, format="PNG")
        question = rng.choice(QUESTIONS[task]).format(**fields)
        records.append(
            {
                "id": f"{split}-{i:06d}",
                "image": name,
                "conversations": [
                    {"from": "human", "value": f"{IMAGE_TOKEN}\n{question}"},
                    {"from": "gpt", "value": answer},
                ],
                "task": task,
                "objects": objects,
            }
        )
    return records, redraws


def generate(
    out_dir: str | Path,
    *,
    num_train: int,
    num_eval: int,
    image_size: int = 64,
    seed: int = 0,
    num_align: int | None = None,
    tasks: Sequence[str] = TASKS,
) -> dict:
    """Write the dataset into `out_dir` and return its meta (also written as `out_dir/meta.json`).

    Files: `images/*.png`, `align.json` (num_align caption records, default num_train), `train.json` (num_train
    records over `tasks`, balanced), `eval.json` (num_eval held-out records over `tasks`), `meta.json`.
    Records name images relative to `out_dir/images`. The same arguments always give the same bytes.
    """
    sizes = {"num_train": num_train, "num_eval": num_eval, "num_align": num_align or 0}
    if any(v < 0 for v in sizes.values()):
        raise ValueError(f"record counts must be >= 0, got {sizes}")
    unknown = set(tasks) - set(TASKS)
    if unknown or not tasks:
        raise ValueError(f"tasks must be a non-empty subset of {TASKS}, got {list(tasks)}")
    if image_size < 32:
        raise ValueError(f"image_size must be >= 32 (shapes and words become unreadable), got {image_size}")
    out = Path(out_dir)
    images_dir = out / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    for stale in images_dir.glob("*.png"):  # a re-run must not leave images of a larger earlier run
        stale.unlink()

    training_pixels: set[bytes] = set()
    common = {"image_size": image_size, "seed": seed, "images_dir": images_dir}
    align, _ = _build_split(
        "align",
        ALIGN_TASKS,
        num_train if num_align is None else num_align,
        seen=training_pixels,
        forbidden=set(),
        **common,
    )
    train, _ = _build_split("train", tasks, num_train, seen=training_pixels, forbidden=set(), **common)
    held_out, redraws = _build_split("eval", tasks, num_eval, seen=set(), forbidden=training_pixels, **common)

    splits = {"align": align, "train": train, "eval": held_out}
    for split, records in splits.items():
        (out / f"{split}.json").write_text(json.dumps(records, indent=1) + "\n")
    meta = {
        "seed": seed,
        "image_size": image_size,
        "image_root": "images",
        "files": {split: f"{split}.json" for split in splits},
        "counts": {
            split: dict(sorted(Counter(r["task"] for r in recs).items())) for split, recs in splits.items()
        },
        "vocab": {
            "colors": list(COLORS),
            "shapes": list(SHAPES),
            "words": list(WORDS),
            "positions": list(POSITIONS),
            "counts": list(COUNTS),
            "box_grid": [0, GRID],
        },
        "colors_rgb": {name: list(rgb) for name, rgb in COLORS.items()},
        "chance": blind_chance(),
        "eval_redraws": redraws,  # eval images re-drawn because their pixels matched a training image
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    return meta


def load_split(out_dir: str | Path, split: str) -> list[dict]:
    """The records of `split` ("align", "train" or "eval")."""
    return json.loads((Path(out_dir) / f"{split}.json").read_text())


def training_texts(out_dir: str | Path, splits: Sequence[str] = ("align", "train")) -> Iterator[str]:
    """Every conversation turn of the training splits: the corpus for `tokenizer.train_tokenizer`."""
    for split in splits:
        for record in load_split(out_dir, split):
            for turn in record["conversations"]:
                yield turn["value"]


# ----------------------------------------------------------------------------------------------------------
# Scoring

_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """Lower case, articles dropped, whitespace collapsed, trailing periods removed (VQA-style, minus synonyms)."""
    text = _ARTICLES.sub(" ", text.strip().lower())
    return " ".join(text.split()).rstrip(".").strip()


def answers_match(task: str, prediction: str, reference: str) -> bool:
    """Exact match after normalisation; for `grounding`, the prediction must be one box with equal coordinates."""
    if task == "grounding":
        ref_box = parse_box(reference)
        if ref_box is None:
            raise ValueError(f"grounding reference has no box: {reference!r}")
        pred = prediction.strip().rstrip(".").strip()
        return _BOX_RE.fullmatch(pred) is not None and parse_box(pred) == ref_box
    return normalize_answer(prediction) == normalize_answer(reference)
