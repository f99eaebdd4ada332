"""The terminal chat loop, fed stdin lines."""

from __future__ import annotations

import io

import pytest
from serve_helpers import make_image

from fusevlm.serve.chat import chat
from fusevlm.serve.engine import Engine, SamplingOptions


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    return Engine.load(tiny_model_dir)


def run_chat(engine, lines, image=None):
    out = io.StringIO()
    assert chat(engine=engine, image=image, stdin=io.StringIO("".join(f"{x}\n" for x in lines)), stdout=out,
                max_new_tokens=6) == 0
    return out.getvalue()


def test_chat_streams_answers_keeps_turns_and_switches_images(engine, tmp_path):
    red, blue = tmp_path / "red.png", tmp_path / "blue.png"
    make_image((220, 20, 20)).save(red)
    make_image((20, 20, 220)).save(blue)
    options = SamplingOptions(max_new_tokens=6)
    q1 = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What color?"}]}]
    first = engine.generate(q1, [make_image((220, 20, 20))], options).text
    q2 = [*q1, {"role": "assistant", "content": first}, {"role": "user", "content": [{"type": "text", "text": "Again?"}]}]
    second = engine.generate(q2, [make_image((220, 20, 20))], options).text

    out = run_chat(engine, ["What color?", "Again?", f"/image {blue}", "/reset", "What color?", "/quit", "ignored"],
                   image=red)
    after_reset = engine.generate(q1, [make_image((20, 20, 220))], options).text
    assert f"> {first}\n> {second}\n" in out  # turn 2 saw turn 1 and its image
    assert "(conversation cleared)" in out
    assert out.rstrip().endswith(f"> {after_reset}\n>".rstrip())  # the new image, in a fresh conversation
    assert "ignored" not in out


def test_bad_image_and_end_of_input(engine, tmp_path):
    out = run_chat(engine, [f"/image {tmp_path / 'missing.png'}", "/help"])
    assert "cannot open image" in out and "/reset" in out
    assert out.endswith("> \n")
