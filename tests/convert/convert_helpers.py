"""Small helpers shared by the converter tests (fixtures are written in each test, in the official formats)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from PIL import Image

from fusevlm.data.convert import TEMPLATES


def write_json(path: Path, obj: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, ensure_ascii=False), encoding="utf-8")
    return path


def load(path: Path) -> list[dict[str, Any]]:
    return json.loads(path.read_text(encoding="utf-8"))


def image_bytes(fmt: str = "JPEG", size: tuple[int, int] = (8, 6), color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format=fmt)
    return out.getvalue()


def instruction(record: dict[str, Any], turn: int = 0) -> str:
    """The human text of `turn`, with the leading `<image>\\n` of the first turn removed (and required)."""
    value = record["conversations"][2 * turn]["value"]
    if turn == 0:
        assert value.startswith("<image>\n"), value
        return value[len("<image>\n"):]
    assert "<image>" not in value, value
    return value


def templates(kind: str, lang: str = "en", **fields: str) -> set[str]:
    return {t.format(**fields) for t in TEMPLATES[kind][lang]}


def answers(record: dict[str, Any]) -> list[str]:
    turns = record["conversations"]
    assert [t["from"] for t in turns] == ["human", "gpt"] * (len(turns) // 2)
    return [t["value"] for t in turns[1::2]]
