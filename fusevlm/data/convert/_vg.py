"""Visual Genome v1.2 files, shared by the vg_* converters.

The release is a set of JSON files, each a list with one entry per image:
- `image_data.json`:        {"image_id" (v1.0: "id"), "url", "width", "height", "coco_id", "flickr_id"}
- `question_answers.json`:  {"id": image_id, "qas": [{"qa_id", "image_id", "question", "answer", ...}]}
- `region_descriptions.json`: {"id": image_id, "regions": [{"region_id", "image_id", "phrase",
                                                             "x", "y", "width", "height"}]}
- `objects.json`:           {"image_id", "objects": [{"object_id", "x", "y", "w", "h", "names": [...], ...}]}
Boxes are pixels: (x, y) the top-left corner, then width and height.

The converters take any of these among `--input`, told apart by their entries' keys, so the file names do not
matter. Images live in `VG_100K/` and `VG_100K_2/` (images.zip, images2.zip); `image_data.json`'s url ends in
`<folder>/<id>.jpg`, and that tail is the record's image path (image_root: the folder holding both). Without
`image_data.json` (allowed for vg_vqa only) the path is `<image_id>.jpg`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from .common import ConvertError, Where, expand_inputs, read_json

# the key that identifies each kind of file, checked on its first entry
_KINDS = {"qas": "question_answers", "regions": "region_descriptions", "objects": "objects"}


@dataclass(frozen=True)
class ImageInfo:
    path: str  # relative image path, e.g. "VG_100K/2.jpg"
    width: float | None  # None when the size is missing or not positive
    height: float | None


def _kind(path: Path, data: Any) -> str:
    if not isinstance(data, list):
        raise ConvertError(path, f"expected a list of per-image entries, got {type(data).__name__}")
    if not data:
        raise ConvertError(path, "is empty: cannot tell which Visual Genome file it is")
    first = data[0]
    if isinstance(first, dict):
        for key, kind in _KINDS.items():
            if key in first:
                return kind
        if "width" in first and "height" in first:
            return "image_data"
    keys = sorted(first) if isinstance(first, dict) else type(first).__name__
    raise ConvertError(path, f"not a Visual Genome file this converter reads (first entry: {keys})", record=0)


def load(inputs: list[str | Path], kind: str, need_image_data: bool) -> tuple[list[tuple[Path, list[Any]]],
                                                                            dict[int, ImageInfo] | None]:
    """Read the inputs: the annotation files of `kind` (one or more) and `image_data.json`."""
    annotations: list[tuple[Path, list[Any]]] = []
    images: dict[int, ImageInfo] | None = None
    for path in expand_inputs(inputs, (".json",)):
        data = read_json(path)
        found = _kind(path, data)
        if found == "image_data":
            images = {**(images or {}), **_image_data(path, data)}
        elif found == kind:
            annotations.append((path, data))
        else:
            raise ConvertError(path, f"is a Visual Genome {found} file; this converter reads {kind}.json"
                                     f"{' and image_data.json' if need_image_data else ''}")
    if not annotations:
        raise ValueError(f"no Visual Genome {kind}.json among the inputs {list(map(str, inputs))}")
    if need_image_data and images is None:
        raise ValueError(f"image_data.json (image sizes) must be among the inputs {list(map(str, inputs))}")
    return annotations, images


def _image_data(path: Path, data: list[Any]) -> dict[int, ImageInfo]:
    images = {}
    for index, entry in enumerate(data):
        where = Where(path, index)
        image_id = _id(where, entry, "image_id", "id")
        width = where.get(entry, "width", (int, float), optional=True)
        height = where.get(entry, "height", (int, float), optional=True)
        url = where.get(entry, "url", str, optional=True)
        images[image_id] = ImageInfo(
            path=image_path(url, image_id) if url else f"{image_id}.jpg",
            width=width if width and width > 0 else None,
            height=height if height and height > 0 else None,
        )
    return images


def image_path(url: str, image_id: int) -> str:
    """`https://cs.stanford.edu/people/rak248/VG_100K_2/1.jpg` -> `VG_100K_2/1.jpg`."""
    parts = [p for p in urlparse(url).path.split("/") if p]
    return "/".join(parts[-2:]) if len(parts) >= 2 else f"{image_id}.jpg"


def entry_image_id(where: Where, entry: Any) -> int:
    """The image id of an annotation entry: "id" in question_answers / region_descriptions, else "image_id"."""
    return _id(where, entry, "id", "image_id")


def _id(where: Where, entry: Any, key: str, fallback: str) -> int:
    return where.get(entry, key if not isinstance(entry, dict) or key in entry else fallback, int)
