"""One loaded model and the one way serving generates with it: the processor's encoding, one request at a time.

Shared by the HTTP server and the chat CLI. Generation holds a lock for its whole run, so concurrent callers
queue instead of interleaving on one model (KV caches and streamers are per call, but the model is not
re-entrant on every backend, and one-at-a-time keeps answers identical to sequential runs).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

from ..eval.generate import Prompt, encode_prompts, stop_token_ids
from ..models.vlm import FuseVLMForConditionalGeneration
from ..processing import FuseVLMProcessor


@dataclass
class Generation:
    """The outcome of one call: the text, token counts and why it stopped (``stop`` or ``length``)."""

    text: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = "stop"


@dataclass
class SamplingOptions:
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0 = greedy (deterministic)
    top_p: float = 1.0
    seed: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class _Cancelled(StoppingCriteria):
    """Stops generation when the consumer went away (a client closed its stream)."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


class Engine:
    """A model, its processor and a lock; ``generate`` / ``stream`` take messages with image parts + images."""

    def __init__(self, model: Any, processor: FuseVLMProcessor, name: str = "fusevlm"):
        self.model = model.eval()
        self.processor = processor
        self.name = name
        self.lock = threading.Lock()
        self.stop_ids = stop_token_ids(processor.tokenizer)
        text_config = getattr(model.config, "text_config", model.config)
        self.max_positions: int | None = getattr(text_config, "max_position_embeddings", None)

    @classmethod
    def load(
        cls, model_dir: str | Path, device: str | None = None, dtype: str | None = None, name: str | None = None
    ) -> Engine:
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        kwargs = {"dtype": getattr(torch, dtype)} if dtype else {}
        model = FuseVLMForConditionalGeneration.from_pretrained(str(model_dir), **kwargs).to(device)
        processor = FuseVLMProcessor.from_pretrained(model_dir)
        return cls(model, processor, name=name or Path(model_dir).resolve().name)

    # ---- encoding --------------------------------------------------------------------------------------------
    def encode(self, messages: list[dict[str, Any]], images: list[Image.Image]) -> dict[str, torch.Tensor]:
        """The processor's generation prompt (raises ``ValueError`` subclasses for inconsistent input)."""
        batch = encode_prompts(self.processor, [Prompt(messages, list(images))])
        return {k: v.to(self.model.device) for k, v in batch.items()}

    def _generate_kwargs(self, options: SamplingOptions) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "max_new_tokens": options.max_new_tokens,
            "eos_token_id": self.stop_ids or None,
            "pad_token_id": self.processor.tokenizer.pad_token_id,
        }
        if options.temperature > 0:
            kwargs.update(do_sample=True, temperature=options.temperature, top_p=options.top_p)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        return kwargs

    @torch.inference_mode()
    def _run(self, inputs: dict[str, torch.Tensor], options: SamplingOptions, **extra: Any) -> Generation:
        with self.lock:
            if options.seed is not None:
                torch.manual_seed(options.seed)
            output = self.model.generate(**inputs, **self._generate_kwargs(options), **extra)
        new_tokens = output[0, inputs["input_ids"].shape[1] :].tolist()
        return self._result(inputs, new_tokens, options)

    def _result(self, inputs: dict[str, torch.Tensor], new_tokens: list[int], options: SamplingOptions) -> Generation:
        stopped = bool(new_tokens) and new_tokens[-1] in self.stop_ids
        return Generation(
            text=self.processor.tokenizer.decode(new_tokens, skip_special_tokens=True),
            prompt_tokens=int(inputs["input_ids"].shape[1]),
            completion_tokens=len(new_tokens),
            finish_reason="length" if len(new_tokens) >= options.max_new_tokens and not stopped else "stop",
        )

    # ---- public calls ----------------------------------------------------------------------------------------
    def generate(
        self, messages: list[dict[str, Any]], images: list[Image.Image], options: SamplingOptions
    ) -> Generation:
        return self.generate_encoded(self.encode(messages, images), options)

    def generate_encoded(self, inputs: dict[str, torch.Tensor], options: SamplingOptions) -> Generation:
        """Generate from :meth:`encode`'s output (callers that validate the prompt first encode once)."""
        return self._run(inputs, options)

    def stream(
        self,
        messages: list[dict[str, Any]],
        images: list[Image.Image],
        options: SamplingOptions,
        cancel: threading.Event | None = None,
    ) -> Iterator[str | Generation]:
        return self.stream_encoded(self.encode(messages, images), options, cancel)

    def stream_encoded(
        self, inputs: dict[str, torch.Tensor], options: SamplingOptions, cancel: threading.Event | None = None
    ) -> Iterator[str | Generation]:
        """Yield text pieces as they are generated, then the final :class:`Generation`.

        Generation runs in a thread (transformers' ``TextIteratorStreamer`` pattern); setting ``cancel`` stops
        it at the next token, so an abandoned stream frees the model quickly.
        """
        cancel = cancel or threading.Event()
        streamer = TextIteratorStreamer(self.processor.tokenizer, skip_prompt=True, skip_special_tokens=True)
        holder: dict[str, Any] = {}

        def work() -> None:
            try:
                holder["result"] = self._run(
                    inputs, options, streamer=streamer, stopping_criteria=StoppingCriteriaList([_Cancelled(cancel)])
                )
            except BaseException as err:  # re-raised in the consumer's thread
                holder["error"] = err
                streamer.end()

        thread = threading.Thread(target=work, name="fusevlm-generate", daemon=True)
        thread.start()
        try:
            yield from (piece for piece in streamer if piece)
        finally:
            if thread.is_alive():  # the consumer left early (or generation is just finishing): stop, then wait
                cancel.set()
            thread.join()
        if "error" in holder:
            raise holder["error"]
        yield holder["result"]
