"""Visual Genome question answers (`question_answers.json`) -> multi-turn VQA conversations.

The QAs of one image are grouped, in file order, into conversations of at most `--max-turns` (default 10)
question/answer turns, ids `vg_vqa_<image_id>_<chunk>`. One instruction template is drawn per conversation and
wraps each of its questions; `<image>` opens the first turn only. `image_data.json` among the inputs gives the
image paths (`VG_100K[_2]/<id>.jpg`); without it the path is `<image_id>.jpg`. `read` counts QA pairs.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from . import _vg
from .common import Context, Where, chunks, make_record


def convert_vg_vqa(inputs: list[str | Path], ctx: Context) -> Iterator[dict[str, Any]]:
    ctx.unit = "qa pairs"
    annotations, images = _vg.load(inputs, "question_answers", need_image_data=False)
    for path, entries in annotations:
        for index, entry in ctx.progress(enumerate(entries), total=len(entries), desc=f"vg_vqa {path.name}"):
            where = Where(path, index)
            image_id = _vg.entry_image_id(where, entry)
            turns = []
            for q, qa in enumerate(where.get(entry, "qas", list)):
                ctx.read += 1
                question = where.get(qa, "question", str, label=f"qas[{q}].question").strip()
                answer = where.get(qa, "answer", str, label=f"qas[{q}].answer").strip()
                if question and answer:
                    turns.append((question, answer))
                else:
                    ctx.skip("empty question or answer")
            if images is None:
                image = f"{image_id}.jpg"
            elif image_id in images:
                image = images[image_id].path
            else:
                ctx.skip("image not in image_data.json", len(turns))
                continue
            for c, chunk in enumerate(chunks(turns, ctx.max_turns)):
                template = ctx.template("vqa")
                yield make_record(f"vg_vqa_{image_id}_{c}", image,
                                  [(template.format(question=q), a) for q, a in chunk], "vqa")
