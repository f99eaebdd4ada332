"""Interactive chat in a terminal: streamed answers, ``/image PATH``, ``/reset``, ``/quit``.

The conversation is kept as messages and re-rendered with the model's chat template every turn (through the
same encoding as training and serving), so the model always sees a well-formed multi-turn prompt.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, TextIO

from PIL import Image

from .engine import Engine, Generation, SamplingOptions

HELP = "commands: /image PATH (use an image from the next message on), /reset (forget the conversation), /quit"


class ChatSession:
    """The conversation state: messages (with image parts in place), their images, and the pending image."""

    def __init__(self, engine: Engine, options: SamplingOptions):
        self.engine = engine
        self.options = options
        self.messages: list[dict[str, Any]] = []
        self.images: list[Image.Image] = []
        self.pending: Image.Image | None = None  # attached to the next user message

    def set_image(self, path: str | Path) -> None:
        with Image.open(path) as image:
            self.pending = image.convert("RGB")

    def reset(self) -> None:
        self.messages, self.images = [], []

    def ask(self, text: str, out: TextIO) -> str:
        """Stream the answer to ``text`` into ``out`` and keep both turns in the conversation."""
        content: list[dict[str, Any]] = [{"type": "text", "text": text}]
        images = list(self.images)
        if self.pending is not None:
            content.insert(0, {"type": "image"})
            images.append(self.pending)
        messages = [*self.messages, {"role": "user", "content": content}]
        answer = []
        for piece in self.engine.stream(messages, images, self.options):
            if isinstance(piece, Generation):
                break
            answer.append(piece)
            out.write(piece)
            out.flush()
        out.write("\n")
        # Only a turn that was answered joins the conversation (a failed encode leaves it unchanged).
        reply = "".join(answer)
        self.messages = [*messages, {"role": "assistant", "content": reply}]
        self.images, self.pending = images, None
        return reply


def chat(
    model_dir: str | Path | None = None,
    image: str | Path | None = None,
    *,
    engine: Engine | None = None,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
    max_new_tokens: int = 256,
) -> int:
    """Run the loop until ``/quit`` or end of input; returns an exit status."""
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    if engine is None:
        if model_dir is None:
            raise ValueError("chat needs model_dir or engine")
        engine = Engine.load(model_dir)
    session = ChatSession(engine, SamplingOptions(max_new_tokens=max_new_tokens))
    if image is not None:
        session.set_image(image)
    stdout.write(HELP + "\n")
    for line in _prompts(stdin, stdout):
        if not handle_line(session, line, stdout):
            break
    return 0


def _prompts(stdin: TextIO, stdout: TextIO):
    while True:
        stdout.write("> ")
        stdout.flush()
        line = stdin.readline()
        if not line:  # end of input
            stdout.write("\n")
            return
        if line.strip():
            yield line.strip()


def handle_line(session: ChatSession, line: str, out: TextIO) -> bool:
    """One input line; False ends the loop."""
    command, _, argument = line.partition(" ")
    if command == "/quit":
        return False
    if command == "/reset":
        session.reset()
        out.write("(conversation cleared)\n")
    elif command == "/image":
        try:
            session.set_image(argument.strip())
            out.write(f"(image {argument.strip()} will go with your next message)\n")
        except (OSError, ValueError) as err:
            out.write(f"cannot open image: {err}\n")
    elif command.startswith("/") and command not in ("/", "//"):
        out.write(HELP + "\n")
    else:
        try:
            session.ask(line, out)
        except ValueError as err:  # e.g. a conversation the template/processor refuses
            out.write(f"error: {err}\n")
    return True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, type=Path, help="a fusevlm model folder")
    parser.add_argument("--image", type=Path, default=None, help="an image for the first message")
    parser.add_argument("--max-new-tokens", type=int, default=256)


def run(args: argparse.Namespace) -> int:
    return chat(args.model, args.image, max_new_tokens=args.max_new_tokens)
