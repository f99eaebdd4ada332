"""Visual Genome region descriptions (`region_descriptions.json` + `image_data.json`) -> grounding conversations.

Each usable region gives two one-turn records, both task `grounding`:
- `vg_region_<region_id>_cap`: box -> description ("Describe the region [x1, y1, x2, y2] ..." -> phrase);
- `vg_region_<region_id>_ref`: description -> box ("Where is "<phrase>"? ..." -> "[x1, y1, x2, y2]").
Boxes are normalised to the image size from `image_data.json` and written as 0..999 integers (rule in
`common.normalize_box`). Skipped regions: empty phrase, zero-area box, box empty after clamping to the image,
image size missing. `read` counts regions.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from . import _vg
from .common import Context, Where, format_box, make_record, normalize_box


def convert_vg_regions(inputs: list[str | Path], ctx: Context) -> Iterator[dict[str, Any]]:
    ctx.unit = "regions"
    annotations, images = _vg.load(inputs, "region_descriptions", need_image_data=True)
    assert images is not None
    for path, entries in annotations:
        for index, entry in ctx.progress(enumerate(entries), total=len(entries), desc=f"vg_regions {path.name}"):
            where = Where(path, index)
            image_id = _vg.entry_image_id(where, entry)
            info = images.get(image_id)
            for r, region in enumerate(where.get(entry, "regions", list)):
                ctx.read += 1
                label = f"regions[{r}]"
                region_id = where.get(region, "region_id", int, label=f"{label}.region_id")
                phrase = where.get(region, "phrase", str, label=f"{label}.phrase").strip()
                x, y, w, h = (where.number(region, k, f"{label}.{k}") for k in ("x", "y", "width", "height"))
                if info is None or info.width is None or info.height is None:
                    ctx.skip("missing image size")
                    continue
                if not phrase:
                    ctx.skip("empty phrase")
                    continue
                if w <= 0 or h <= 0:
                    ctx.skip("zero-area box")
                    continue
                box = normalize_box(x, y, w, h, info.width, info.height)
                if box is None:
                    ctx.skip("box empty after clamping to the image")
                    continue
                text = format_box(box)
                yield make_record(f"vg_region_{region_id}_cap", info.path,
                                  [(ctx.template("region_caption").format(box=text), phrase)], "grounding")
                yield make_record(f"vg_region_{region_id}_ref", info.path,
                                  [(ctx.template("region_ground").format(phrase=phrase), text)], "grounding")
