"""Visual Genome objects (`objects.json` + `image_data.json`) -> grounded-caption conversations.

One record per image, id `vg_objects_<image_id>`, task `grounded_caption`: an instruction to describe the
objects with their boxes -> `name [x1, y1, x2, y2]; name [x1, y1, x2, y2]; ...`, the boxes normalised to 0..999
(rule in `common.normalize_box`), the objects in reading order (top to bottom, then left to right) with exact
duplicates (same name and box) dropped. An object's name is its first `names` entry (v1.0 files: `name`).
`read` counts images; skipped objects are counted under "object: <reason>".
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from . import _vg
from .common import Context, Where, format_box, make_record, normalize_box


def convert_vg_objects(inputs: list[str | Path], ctx: Context) -> Iterator[dict[str, Any]]:
    ctx.unit = "images"
    annotations, images = _vg.load(inputs, "objects", need_image_data=True)
    assert images is not None
    for path, entries in annotations:
        for index, entry in ctx.progress(enumerate(entries), total=len(entries), desc=f"vg_objects {path.name}"):
            ctx.read += 1
            where = Where(path, index)
            image_id = _vg.entry_image_id(where, entry)
            objects = where.get(entry, "objects", list)
            info = images.get(image_id)
            if info is None or info.width is None or info.height is None:
                ctx.skip("missing image size")
                continue
            found: dict[tuple[int, ...], tuple[str, list[int]]] = {}
            for o, obj in enumerate(objects):
                label = f"objects[{o}]"
                name = _name(where, obj, label)
                x, y, w, h = (where.number(obj, k, f"{label}.{k}") for k in ("x", "y", "w", "h"))
                if not name:
                    ctx.skip("object: empty name")
                    continue
                if w <= 0 or h <= 0:
                    ctx.skip("object: zero-area box")
                    continue
                box = normalize_box(x, y, w, h, info.width, info.height)
                if box is None:
                    ctx.skip("object: box empty after clamping to the image")
                    continue
                key = (box[1], box[0], box[3], box[2], name)  # reading order: top, left, bottom, right, name
                if key in found:
                    ctx.skip("object: duplicate")
                    continue
                found[key] = (name, box)
            if not found:
                ctx.skip("image without usable objects")
                continue
            answer = "; ".join(f"{name} {format_box(box)}" for _, (name, box) in sorted(found.items()))
            yield make_record(f"vg_objects_{image_id}", info.path,
                              [(ctx.template("grounded_caption"), answer)], "grounded_caption")


def _name(where: Where, obj: Any, label: str) -> str:
    if isinstance(obj, dict) and "names" not in obj and "name" in obj:
        return where.get(obj, "name", str, label=f"{label}.name").strip()
    names = where.get(obj, "names", list, label=f"{label}.names")
    if names and not isinstance(names[0], str):
        raise where.error(f"expected strings, got {type(names[0]).__name__}", f"{label}.names")
    return names[0].strip() if names else ""
