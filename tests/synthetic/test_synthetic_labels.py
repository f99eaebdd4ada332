"""Every label is checked against the pixels it describes."""

import re

import numpy as np
import pytest
from PIL import Image

from fusevlm.data import synthetic
from fusevlm.data.synthetic import (
    BACKGROUND,
    COLORS,
    POSITIONS,
    SHAPES,
    WORDS,
    box_to_pixels,
    caption_of,
    load_split,
    parse_box,
    quadrant_boxes,
    render_scene,
)
from fusevlm.demo import IMAGE_SIZE, PATCH


def _pixels(root, record) -> np.ndarray:
    return np.asarray(Image.open(root / "images" / record["image"]).convert("RGB"))


def _centre_color(pixels: np.ndarray, box) -> tuple[int, ...]:
    x0, y0, x1, y1 = box_to_pixels(box, pixels.shape[0])
    return tuple(int(v) for v in pixels[(y0 + y1) // 2, (x0 + x1) // 2])


def _named(text: str, vocab) -> str:
    found = [w for w in vocab if re.search(rf"\b{w}\b", text)]
    assert len(found) == 1, (text, found)
    return found[0]


def _drawn_as(pixels: np.ndarray, obj: dict, shape: str) -> bool:
    """Whether the object's pixels are exactly `shape` drawn alone in the object's pixel box."""
    alone = np.asarray(render_scene([{**obj, "shape": shape}], pixels.shape[0]))
    color = COLORS[obj["color"]]
    return np.array_equal(np.all(pixels == color, axis=-1), np.all(alone == color, axis=-1))


def _quadrant(pixels: np.ndarray, obj: dict) -> str:
    """Where the object's pixels lie, from the pixels themselves."""
    ys, xs = np.nonzero(np.all(pixels == COLORS[obj["color"]], axis=-1))
    half = pixels.shape[0] / 2
    vertical = "top" if ys.max() < half else "bottom" if ys.min() >= half else "straddles"
    horizontal = "left" if xs.max() < half else "right" if xs.min() >= half else "straddles"
    return f"{vertical} {horizontal}"


def _colors_present(pixels: np.ndarray) -> set[tuple[int, int, int]]:
    packed = np.unique((pixels.astype(np.int64) * [1 << 16, 1 << 8, 1]).sum(-1))
    return {(int(v) >> 16, (int(v) >> 8) & 255, int(v) & 255) for v in packed}


def check_record(root, record) -> None:
    pixels = _pixels(root, record)
    question, answer = (t["value"] for t in record["conversations"])
    objects, task = record["objects"], record["task"]
    if task == "ocr":
        word = objects[0]["word"]
        assert answer == word
        rerendered = np.asarray(
            synthetic.render_word(word, objects[0]["xy"], pixels.shape[0], objects[0]["ink"])
        )
        assert np.array_equal(pixels, rerendered)
        ink = np.argwhere(np.any(pixels != BACKGROUND, axis=-1))
        assert len(ink) > 20
        assert ink.min() > 0 and ink.max() < pixels.shape[0] - 1  # the word is not clipped
        assert _colors_present(pixels) >= {BACKGROUND, tuple(objects[0]["ink"])}
        return
    # Scene: the only colours are the background and one per object, each object sits in its quadrant.
    present = _colors_present(pixels)
    assert present == {BACKGROUND} | {COLORS[o["color"]] for o in objects}
    for o in objects:
        assert _centre_color(pixels, o["box"]) == COLORS[o["color"]]
        assert _drawn_as(pixels, o, o["shape"])
        x0, y0, x1, y1 = box_to_pixels(o["box"], pixels.shape[0])
        px0, py0, px1, py1 = o["pixel_box"]
        margin = pixels.shape[0] // 32
        assert 0 <= px0 - x0 <= margin and 0 <= py0 - y0 <= margin
        assert 0 <= x1 - px1 <= margin and 0 <= y1 - py1 <= margin
        assert sum(tuple(o["box"]) in quadrant_boxes(p) for p in POSITIONS) == 1
        assert tuple(o["box"]) in quadrant_boxes(_quadrant(pixels, o))
    assert len({o["color"] for o in objects}) == len({o["shape"] for o in objects}) == len(objects)
    if task == "caption":
        assert answer == caption_of(objects)
    elif task == "count":
        assert int(answer) == len(present) - 1
    elif task == "color":
        (obj,) = [o for o in objects if _quadrant(pixels, o) == _named(question, POSITIONS)]
        assert _centre_color(pixels, obj["box"]) == COLORS[answer]
    elif task == "shape":
        (obj,) = [o for o in objects if o["color"] == _named(question, COLORS)]
        assert _drawn_as(pixels, obj, answer)
    elif task == "position":
        (obj,) = [o for o in objects if o["color"] == _named(question, COLORS)]
        assert answer == _quadrant(pixels, obj)
    elif task == "grounding":
        box = parse_box(answer)
        assert _centre_color(pixels, box) == COLORS[_named(question, COLORS)]
        (obj,) = [o for o in objects if tuple(o["box"]) == box]
        assert _drawn_as(pixels, obj, _named(question, SHAPES))
    elif task == "region":
        color, shape = answer.split()
        box = parse_box(question)
        assert _centre_color(pixels, box) == COLORS[color]
        (obj,) = [o for o in objects if tuple(o["box"]) == box]
        assert _drawn_as(pixels, obj, shape)
    else:
        raise AssertionError(f"unchecked task {task}")


@pytest.mark.parametrize("split", ["align", "train", "eval"])
def test_labels_match_pixels(dataset, split):
    root, _ = dataset
    for record in load_split(root, split):
        check_record(root, record)


@pytest.mark.parametrize("image_size", [48, 96])
def test_labels_match_pixels_at_other_sizes(tmp_path, image_size):
    synthetic.generate(tmp_path, num_train=24, num_eval=16, num_align=4, image_size=image_size)
    for split in ("align", "train", "eval"):
        for record in load_split(tmp_path, split):
            assert _pixels(tmp_path, record).shape == (image_size, image_size, 3)
            check_record(tmp_path, record)


def test_checker_catches_a_wrong_label(dataset):
    root, _ = dataset
    record = next(r for r in load_split(root, "eval") if r["task"] == "color")
    wrong = next(c for c in COLORS if c != record["conversations"][1]["value"])
    bad = {**record, "conversations": [record["conversations"][0], {"from": "gpt", "value": wrong}]}
    with pytest.raises(AssertionError):
        check_record(root, bad)


def test_shapes_are_told_apart_in_every_box():
    # Every grid box, at its smallest jittered size, must still give six different masks, so "drawn as the
    # labelled shape" (check_record) also means "not drawn as another shape".
    margin = 64 // 32
    for position in POSITIONS:
        for box in quadrant_boxes(position):
            x0, y0, x1, y1 = box_to_pixels(box, 64)
            for pixel_box in ([x0, y0, x1, y1], [x0 + margin, y0 + margin, x1 - margin, y1 - margin]):
                masks = set()
                for shape in SHAPES:
                    obj = {"color": "red", "shape": shape, "box": list(box), "pixel_box": pixel_box}
                    masks.add(np.all(np.asarray(render_scene([obj], 64)) == COLORS["red"], axis=-1).tobytes())
                assert len(masks) == len(SHAPES), (box, pixel_box)


def test_words_render_differently():
    images = {synthetic.render_word(w, (4, 4), 64).tobytes() for w in WORDS}
    assert len(images) == len(WORDS)


def test_boxes_of_different_quadrants_never_overlap():
    # They may meet at the quadrant border (gap 0), never share an area (gap < 0).
    for i, a in enumerate(POSITIONS):
        for b in POSITIONS[i + 1 :]:
            for ba in quadrant_boxes(a):
                for bb in quadrant_boxes(b):
                    gap_x = max(bb[0] - ba[2], ba[0] - bb[2])
                    gap_y = max(bb[1] - ba[3], ba[1] - bb[3])
                    assert max(gap_x, gap_y) >= 0


def test_box_edges_fall_on_patch_borders_at_the_demo_size():
    # The demo's ViT cuts 64 px images into 8 px patches; an unjittered box starts and ends on patch borders.
    for position in POSITIONS:
        for box in quadrant_boxes(position):
            assert all(c % PATCH == 0 for c in box_to_pixels(box, IMAGE_SIZE)), box
