"""``fusevlm web``: the Gradio page driven by a real headless Chromium (Debian's, through Playwright).

Needs ``gradio`` and ``playwright`` (the Python package only: ``pip install -e ".[dev,web]"``) and Debian's
``chromium``; ``.ci/run`` installs all three. Skipped, with the reason, when any is missing.
"""

from __future__ import annotations

import os
import shutil
import socket
import time

import pytest

gr = pytest.importorskip("gradio", reason="gradio is not installed (pip install -e .[web])")
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed (pip install -e .[dev])"
)

CHROMIUM = os.environ.get("FUSEVLM_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (apt-get install -y chromium)")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RecordingEngine:
    """Wraps an Engine and records what each stream call received (to check the upload reached the model)."""

    def __init__(self, engine):
        self.engine = engine
        self.name = engine.name
        self.calls: list[tuple[list, list]] = []

    def stream(self, messages, images, options, cancel=None):
        self.calls.append((messages, list(images)))
        return self.engine.stream(messages, images, options, cancel)


def test_web_page_upload_and_chat(tiny_model_dir, tmp_path):
    from PIL import Image

    from fusevlm.serve.engine import Engine, SamplingOptions
    from fusevlm.serve.web import build_demo

    engine = RecordingEngine(Engine.load(tiny_model_dir, device="cpu"))
    demo = build_demo(engine, SamplingOptions(max_new_tokens=8))
    image_path = tmp_path / "red.png"
    Image.new("RGB", (48, 32), (220, 30, 30)).save(image_path)

    port = _free_port()
    demo.launch(
        prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, ssr_mode=False, quiet=True
    )
    try:
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
            try:
                page = browser.new_page()
                page.set_default_timeout(30_000)
                page.goto(f"http://127.0.0.1:{port}/")
                page.locator("#fusevlm-image input[type=file]").set_input_files(str(image_path))
                page.locator("#fusevlm-image img").first.wait_for(state="visible")  # the upload's preview
                box = page.locator("#fusevlm-input textarea")
                box.fill("What color is this image?")
                box.press("Enter")

                bot = page.locator("#fusevlm-chat [data-testid='bot']")
                deadline = time.monotonic() + 40
                reply = ""
                while time.monotonic() < deadline:
                    if bot.count() and engine.calls and bot.last.inner_text().strip():
                        reply = bot.last.inner_text().strip()
                        if box.input_value() == "":  # the event finished (the textbox is cleared at the end)
                            break
                    time.sleep(0.2)
                page.screenshot(path=str(tmp_path / "web.png"), full_page=True)
            finally:
                browser.close()
    finally:
        demo.close()

    assert reply, "no assistant reply appeared in the chat"
    assert (tmp_path / "web.png").stat().st_size > 0
    assert len(engine.calls) == 1
    messages, images = engine.calls[0]
    assert len(images) == 1 and images[0].size == (48, 32)  # the uploaded picture reached the model
    assert messages[-1]["content"][0] == {"type": "image"}
    assert messages[-1]["content"][1]["text"] == "What color is this image?"


class FakeEngine:
    name = "fake"

    def __init__(self):
        self.calls = []

    def stream(self, messages, images, options, cancel=None):
        from fusevlm.serve.engine import Generation

        self.calls.append((messages, list(images)))
        yield "a"
        yield "b"
        yield Generation(text="ab")


def test_conversation_attaches_a_new_image_once():
    from PIL import Image

    from fusevlm.serve.engine import SamplingOptions
    from fusevlm.serve.web import WebConversation, respond, with_image

    engine, options = FakeEngine(), SamplingOptions()
    red = Image.new("RGB", (8, 8), (255, 0, 0))
    state = with_image(WebConversation(), red)
    *partial, (state, shown, answer) = respond(engine, options, state, "hi")
    assert [p[2] for p in partial] == ["a", "ab"] and answer == "ab"
    assert shown == [{"role": "user", "content": "[image] hi"}, {"role": "assistant", "content": "ab"}]
    # The same picture still in the box is not attached again; a new one is, after the earlier turns.
    state = with_image(state, red.copy())
    *_, (state, _, _) = respond(engine, options, state, "again")
    assert len(engine.calls[1][1]) == 1 and engine.calls[1][0][-1]["content"] == [
        {"type": "text", "text": "again"}
    ]
    state = with_image(state, Image.new("RGB", (8, 8), (0, 0, 255)))
    *_, (state, _, _) = respond(engine, options, state, "and this?")
    messages, images = engine.calls[2]
    assert len(images) == 2 and len(messages) == 5 and messages[-1]["content"][0] == {"type": "image"}


def test_web_arguments_default_to_loopback():
    import argparse

    from fusevlm.serve.web import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--model", "m"])
    assert args.host == "127.0.0.1" and args.port == 7860
