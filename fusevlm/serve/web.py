"""``fusevlm web``: a Gradio page to upload an image and chat with a model folder.

The page keeps the conversation as messages with image parts in place (the same shape as the chat CLI and the
HTTP server), re-rendered through the model's chat template every turn by :class:`~fusevlm.serve.engine.Engine`.
The picture in the image box is attached to the next message sent when it is new (as ``/image`` does in the
CLI); "Clear" forgets the conversation. Generation goes through the engine's lock and the Gradio queue runs one event at a time, so two
browser tabs never generate concurrently on one model.

Gradio is an optional dependency (``pip install "gradio>=6,<7"``); it is imported only when the page is built.
"""

from __future__ import annotations

import argparse
import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from .engine import Engine, Generation, SamplingOptions

TITLE = "fusevlm"


@dataclass
class WebConversation:
    """One browser session's state: engine messages, their images, and the image for the next message."""

    messages: list[dict[str, Any]] = field(default_factory=list)
    images: list[Image.Image] = field(default_factory=list)
    pending: Image.Image | None = None
    last_image: str | None = None  # digest of the image shown when the last message was sent


def image_digest(image: Image.Image) -> str:
    return hashlib.sha1(image.mode.encode() + repr(image.size).encode() + image.tobytes()).hexdigest()


def with_image(state: WebConversation, picture: Image.Image | None) -> WebConversation:
    """``state`` with the image box's picture pending, if it is not the one already sent (nor empty).

    The image is read with the message (not from an upload event), so a message sent right after an upload
    always sees it; an unchanged image is not attached again to every turn.
    """
    if picture is None:
        return WebConversation(state.messages, state.images, None, None)
    digest = image_digest(picture)
    if digest == state.last_image:
        return state
    return WebConversation(state.messages, state.images, picture.convert("RGB"), digest)


def _require_gradio() -> Any:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no phoning home from a local model page
    try:
        import gradio as gr
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise SystemExit('fusevlm web needs Gradio: pip install "gradio>=6,<7"') from err
    return gr


def respond(
    engine: Engine, options: SamplingOptions, state: WebConversation, text: str
) -> Iterator[tuple[WebConversation, list[dict[str, Any]], str]]:
    """Stream the answer to ``text``: yields (state, chatbot history, partial answer) as tokens arrive.

    The turn joins ``state`` only once it is answered, so a refused prompt (``ValueError`` from encoding, e.g.
    too long for the model) leaves the conversation as it was.
    """
    content: list[dict[str, Any]] = [{"type": "text", "text": text}]
    images = list(state.images)
    if state.pending is not None:
        content.insert(0, {"type": "image"})
        images.append(state.pending)
    messages = [*state.messages, {"role": "user", "content": content}]
    answer = ""
    for piece in engine.stream(messages, images, options):
        if isinstance(piece, Generation):
            break
        answer += piece
        yield state, history(messages), answer
    done = WebConversation(
        [*messages, {"role": "assistant", "content": answer}], images, None, state.last_image
    )
    yield done, history(done.messages), answer


def history(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Engine messages as Gradio chatbot messages (an attached image shows as a marker before the text)."""
    shown = []
    for message in messages:
        content = message["content"]
        if isinstance(content, list):
            texts = [part.get("text", "") for part in content if part.get("type") == "text"]
            marker = "[image] " if any(part.get("type") == "image" for part in content) else ""
            content = marker + "\n".join(texts)
        shown.append({"role": message["role"], "content": content})
    return shown


def build_demo(engine: Engine, options: SamplingOptions | None = None) -> Any:
    """The Gradio Blocks app for ``engine`` (not launched)."""
    gr = _require_gradio()
    base = options or SamplingOptions()

    with gr.Blocks(title=TITLE, analytics_enabled=False) as demo:
        gr.Markdown(f"## {TITLE}: {engine.name}\nUpload an image, then ask about it.")
        state = gr.State(WebConversation())
        with gr.Row():
            with gr.Column(scale=1):
                image = gr.Image(
                    type="pil", label="Image", sources=["upload", "clipboard"], elem_id="fusevlm-image"
                )
                max_new_tokens = gr.Slider(1, 2048, value=base.max_new_tokens, step=1, label="Max new tokens")
                temperature = gr.Slider(
                    0.0, 2.0, value=base.temperature, step=0.05, label="Temperature (0 = greedy)"
                )
            with gr.Column(scale=2):
                chatbot = gr.Chatbot(label="Chat", elem_id="fusevlm-chat", height=420)
                textbox = gr.Textbox(
                    placeholder="Ask about the image and press Enter",
                    show_label=False,
                    elem_id="fusevlm-input",
                )
                with gr.Row():
                    send = gr.Button("Send", variant="primary", elem_id="fusevlm-send")
                    clear = gr.Button("Clear", elem_id="fusevlm-clear")

        def on_send(
            text: str, picture: Image.Image | None, conv: WebConversation, tokens: float, temp: float
        ) -> Iterator[tuple[WebConversation, list[dict[str, Any]], str]]:
            text = (text or "").strip()
            if not text:
                yield conv, history(conv.messages), ""
                return
            conv = with_image(conv, picture)
            opts = SamplingOptions(
                max_new_tokens=int(tokens), temperature=float(temp), top_p=base.top_p, seed=base.seed
            )
            try:
                for new_state, shown, partial in respond(engine, opts, conv, text):
                    if new_state is conv:  # still streaming: show the growing answer under the question
                        yield conv, [*shown, {"role": "assistant", "content": partial}], ""
                    else:
                        yield new_state, shown, ""
            except ValueError as err:  # the processor refused the prompt (too long, image mismatch, ...)
                raise gr.Error(str(err)) from err

        def on_clear() -> tuple[WebConversation, list[dict[str, Any]], None, str]:
            return WebConversation(), [], None, ""

        submit_args = {"fn": on_send, "inputs": [textbox, image, state, max_new_tokens, temperature]}
        textbox.submit(**submit_args, outputs=[state, chatbot, textbox])
        send.click(**submit_args, outputs=[state, chatbot, textbox])
        clear.click(on_clear, None, [state, chatbot, image, textbox], queue=False)

    # One event at a time: the model is shared and generation is serialized anyway.
    demo.queue(default_concurrency_limit=1)
    return demo


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, type=Path, help="a fusevlm model folder")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--device", default=None, help="cuda / cpu (default: cuda when available)")
    parser.add_argument("--dtype", default=None, help="torch dtype name, e.g. bfloat16")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--temperature", type=float, default=0.0)


def run(args: argparse.Namespace) -> int:
    engine = Engine.load(args.model, device=args.device, dtype=args.dtype)
    demo = build_demo(
        engine, SamplingOptions(max_new_tokens=args.max_new_tokens, temperature=args.temperature)
    )
    demo.launch(server_name=args.host, server_port=args.port, share=False, ssr_mode=False, show_error=True)
    return 0
