"""``FuseVLMProcessor``: image processing + tokenizer + chat template in one object.

Training, evaluation and serving all call it, so they cannot disagree on how a prompt becomes tokens. Each
``<image>`` in a text becomes exactly ``image_seq_length`` (M) image-token positions; images are given in the order
their placeholders appear. The call convention is transformers' (``processor(text=..., images=...,
return_tensors="pt", padding=True)``) and the model takes ``input_ids``, ``attention_mask``, ``pixel_values``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jinja2.exceptions import TemplateError
from PIL import Image
from transformers import AutoImageProcessor, AutoTokenizer, BatchFeature, PreTrainedTokenizerBase

from .templates import (
    BATCH_VARIABLE,
    CHATML,
    MARKS,
    assistant_char_spans,
    batch_template,
    has_generation_marks,
    split_marked,
)

IGNORE_INDEX = -100
PROCESSOR_CONFIG = "processor_config.json"
IMAGE_PROCESSOR_CONFIG = "preprocessor_config.json"


class ImageTokenError(ValueError):
    """Placeholders and images do not line up; the message names the sample."""


class FusedImageProcessor:
    """One image processor per member of a fused encoder; ``pixel_values`` stacks their outputs on channels."""

    image_processor_type = "FusedImageProcessor"

    def __init__(self, members: Sequence[Any]):
        self.members = list(members)

    @property
    def image_mean(self) -> list[float]:
        return list(self.members[0].image_mean)

    def __call__(self, images: Any, return_tensors: str = "pt", **kwargs: Any) -> BatchFeature:
        if kwargs:
            outputs = [m(images, return_tensors="pt", **kwargs)["pixel_values"] for m in self.members]
        else:
            outputs = [pixel_values(m, images) for m in self.members]
        return BatchFeature({"pixel_values": torch.cat(outputs, dim=1)}, tensor_type=return_tensors)

    def to_dict(self) -> dict[str, Any]:
        return {
            "image_processor_type": self.image_processor_type,
            "members": [m.to_dict() for m in self.members],
        }

    def save_pretrained(self, save_directory: str | Path) -> None:
        path = Path(save_directory) / IMAGE_PROCESSOR_CONFIG
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> FusedImageProcessor:
        from transformers.models.auto.image_processing_auto import get_image_processor_class_from_name

        members = []
        for member in config["members"]:
            member = dict(member)
            member_cls = get_image_processor_class_from_name(member.pop("image_processor_type"))
            members.append(member_cls(**{k: v for k, v in member.items() if not k.startswith("_")}))
        return cls(members)


def pixel_values(image_processor: Any, images: list[Image.Image]) -> torch.Tensor:
    """``image_processor(images, return_tensors="pt")["pixel_values"]``, by a fast exact path where one applies.

    transformers' PIL processors of the CLIP family (CLIP, SigLIP, Chinese-CLIP) run resize, centre crop, rescale
    and normalise through per-call argument validation and float64 intermediates, about 0.5 ms for a 64 px image.
    For RGB images and their standard steps the fast path does the same PIL resize and the same crop, then rescale
    and normalise as a 256-entry float32 table per channel computed with the very same numpy operations, so the
    output is bit-identical. Anything else goes to the image processor itself.
    """
    fast = _fast_pixel_values(image_processor, images)
    if fast is not None:
        return fast
    return image_processor(images, return_tensors="pt")["pixel_values"]


def _fast_path_classes() -> tuple[type, ...]:
    from transformers.models.chinese_clip.image_processing_pil_chinese_clip import (
        ChineseCLIPImageProcessorPil,
    )
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    return (CLIPImageProcessorPil, SiglipImageProcessorPil, ChineseCLIPImageProcessorPil)


_LUTS: dict[tuple, np.ndarray] = {}


def _value_table(scale: float | None, mean: Any, std: Any) -> np.ndarray:
    """(3, 256) float32: what rescale (float64, then float32) and normalise (float32) make of each byte value."""
    key = (scale, tuple(mean) if mean is not None else None, tuple(std) if std is not None else None)
    if key not in _LUTS:
        values = np.arange(256, dtype=np.uint8)[None].repeat(3, axis=0)
        table = (values.astype(np.float64) * scale).astype(np.float32) if scale is not None else values.astype(np.float32)
        if mean is not None:
            table = (table - np.array(mean, dtype=np.float32)[:, None]) / np.array(std, dtype=np.float32)[:, None]
        _LUTS[key] = table
    return _LUTS[key]


def _fast_pixel_values(ip: Any, images: list[Image.Image]) -> torch.Tensor | None:
    from transformers.image_processing_backends import PilBackend
    from transformers.image_utils import SizeDict

    if type(ip) not in _fast_path_classes() or type(ip)._preprocess is not PilBackend._preprocess:
        return None
    if not images or getattr(ip, "do_pad", None) or not (ip.do_rescale or ip.do_normalize):
        return None
    if not all(isinstance(image, Image.Image) and image.mode == "RGB" for image in images):
        return None
    size, crop = (SizeDict(**v) if isinstance(v, dict) else v for v in (ip.size, ip.crop_size))
    if ip.do_resize and not ((size.shortest_edge and not size.longest_edge and not size.height)
                             or (size.height and size.width and not size.shortest_edge)):
        return None
    table = _value_table(ip.rescale_factor if ip.do_rescale else None,
                         ip.image_mean if ip.do_normalize else None, ip.image_std if ip.do_normalize else None)
    out = []
    for image in images:
        if ip.do_resize:
            width, height = image.size
            if size.shortest_edge:  # transformers' get_resize_output_image_size, default_to_square=False
                short, long = (width, height) if width <= height else (height, width)
                new_short, new_long = size.shortest_edge, int(size.shortest_edge * long / short)
                new_width, new_height = (new_short, new_long) if width <= height else (new_long, new_short)
            else:
                new_width, new_height = size.width, size.height
            if (new_width, new_height) != image.size:
                resample = ip.resample if ip.resample is not None else Image.Resampling.BILINEAR
                image = image.resize((new_width, new_height), resample=resample, reducing_gap=None)
        pixels = np.asarray(image)
        if ip.do_center_crop:
            height, width = pixels.shape[:2]
            top, left = (height - crop.height) // 2, (width - crop.width) // 2
            if top < 0 or left < 0:
                return None  # transformers pads such an image; leave that to it
            pixels = pixels[top : top + crop.height, left : left + crop.width]
        out.append(np.stack([np.take(table[c], pixels[..., c]) for c in range(3)]))
    if len({array.shape for array in out}) > 1:
        return None  # transformers would refuse to stack them too; let it say so
    return torch.from_numpy(np.stack(out))


def resize_image_processor(image_processor: Any, size: int) -> Any:
    """Make an HF image processor emit ``size`` x ``size`` images (used to align fused members)."""
    if "shortest_edge" in (image_processor.size or {}):
        image_processor.size = {"shortest_edge": size}
    else:
        image_processor.size = {"height": size, "width": size}
    if getattr(image_processor, "do_center_crop", False):
        image_processor.crop_size = {"height": size, "width": size}
    return image_processor


def flatten_content(content: str | list[dict[str, Any]], image_token: str) -> str:
    """HF multimodal message content (a list of parts) as text with image placeholders."""
    if isinstance(content, str):
        return content
    pieces = []
    for part in content:
        kind = part.get("type")
        if kind == "image" or kind == "image_url":
            pieces.append(image_token)
        elif kind == "text":
            pieces.append(part["text"])
        else:
            raise ValueError(f"unsupported message part type {kind!r} (expected 'image' or 'text')")
    return "\n".join(pieces)


class FuseVLMProcessor:
    """Turns prompts with ``<image>`` placeholders and images into model inputs."""

    def __init__(
        self,
        image_processor: Any,
        tokenizer: PreTrainedTokenizerBase,
        image_seq_length: int,
        image_token: str = "<image>",
        chat_template: str | None = None,
    ):
        self.image_processor = image_processor
        self.tokenizer = tokenizer
        self.image_seq_length = int(image_seq_length)
        self.image_token = image_token
        ids = tokenizer.convert_tokens_to_ids([image_token])
        if ids[0] is None or ids[0] == tokenizer.unk_token_id:
            raise ValueError(
                f"the tokenizer has no {image_token!r} token; add it (fusevlm.models.llm.add_image_token)"
            )
        self.image_token_id: int = ids[0]
        # One template, kept on the tokenizer too, so the saved tokenizer alone renders prompts the same way.
        self.chat_template = chat_template or tokenizer.chat_template or CHATML
        tokenizer.chat_template = self.chat_template

    # ---- prompts ---------------------------------------------------------------------------------------------
    def apply_chat_template(
        self,
        conversation: list[dict[str, Any]],
        add_generation_prompt: bool = False,
        tokenize: bool = False,
        **kwargs,
    ) -> Any:
        """Render HF-format messages; image parts (``{"type": "image"}``) become ``<image>`` placeholders."""
        messages = [{**m, "content": flatten_content(m["content"], self.image_token)} for m in conversation]
        return self.tokenizer.apply_chat_template(
            messages,
            chat_template=self.chat_template,
            add_generation_prompt=add_generation_prompt,
            tokenize=tokenize,
            **kwargs,
        )

    def encode_chat(
        self,
        messages: list[dict[str, Any]],
        images: list[Image.Image] | None = None,
        add_generation_prompt: bool = False,
        chat_template: str | None = None,
    ) -> dict[str, Any]:
        """One conversation -> ``input_ids``, ``labels`` (assistant tokens only, else -100), ``pixel_values``.

        The single path from a conversation to model inputs, for training and for inference prompts alike.
        ``chat_template`` overrides the processor's (training's ``plain`` alignment format, say).
        """
        tokens = self.tokenize_chat(messages, add_generation_prompt, chat_template)
        wanted = tokens["input_ids"].count(self.image_token_id) // max(self.image_seq_length, 1)
        given = len(images or [])
        if wanted != given:
            raise ImageTokenError(f"the conversation has {wanted} {self.image_token} placeholder(s) but {given} image(s)")
        if images:
            tokens["pixel_values"] = pixel_values(self.image_processor, images)
        return tokens

    def tokenize_chat(
        self, messages: list[dict[str, Any]], add_generation_prompt: bool = False, chat_template: str | None = None
    ) -> dict[str, list[int]]:
        """The token ids and labels of a conversation, each ``<image>`` expanded to M image tokens (never trained).

        One conversation through ``tokenize_chats``: training's cache, evaluation and serving share that path.
        """
        (result,) = self.tokenize_chats([messages], add_generation_prompt, chat_template)
        if isinstance(result, Exception):
            raise result
        input_ids, labels = self.expand_image_tokens_ids(*result)
        return {"input_ids": input_ids.tolist(), "labels": labels.tolist()}

    def tokenize_chats(
        self,
        conversations: Sequence[list[dict[str, Any]]],
        add_generation_prompt: bool = False,
        chat_template: str | None = None,
    ) -> list[tuple[np.ndarray, np.ndarray] | Exception]:
        """Many conversations at once: per conversation its token ids and labels (int32, ``<image>`` NOT yet
        expanded: ``expand_image_tokens_ids`` does that), or the exception its template raised.

        A template with ``{% generation %}`` marks renders the whole batch in one call (``batch_template``); if
        that fails, each conversation is rendered alone, so a template error belongs to its record. The texts are
        tokenized in one batch call of the fast tokenizer. A token is trained when it overlaps an assistant span
        (a generation block, or for templates without marks a reply found by rendering growing prefixes,
        ``assistant_char_spans``): the rule of ``apply_chat_template``'s ``return_assistant_tokens_mask``.
        """
        template = chat_template or self.chat_template
        chats = [[m if isinstance(m["content"], str) else {**m, "content": flatten_content(m["content"], self.image_token)}
                  for m in messages] for messages in conversations]
        rendered = self._render_batch(chats, add_generation_prompt, template) if has_generation_marks(template) else None
        results: list[Any] = [None] * len(chats)
        texts, spans, positions = [], [], []
        for position, messages in enumerate(chats):
            try:
                text, assistant = (rendered[position] if rendered is not None
                                   else self._render_one(messages, add_generation_prompt, template))
            except (ValueError, TypeError, TemplateError) as err:  # the template's raise_exception, or a bad value
                results[position] = err
                continue
            texts.append(text)
            spans.append(assistant)
            positions.append(position)
        if not texts:
            return results
        for position, (ids, offsets), assistant in zip(positions, self._encode_texts(texts), spans, strict=True):
            ids = np.asarray(ids, dtype=np.int32)
            trained = np.zeros(len(ids), dtype=bool)
            if assistant:
                offsets = np.fromiter(chain.from_iterable(offsets), dtype=np.int64, count=2 * len(ids)).reshape(-1, 2)
                for start, end in assistant:
                    trained |= (offsets[:, 0] < end) & (offsets[:, 1] > start)
            results[position] = (ids, np.where(trained, ids, np.int32(IGNORE_INDEX)).astype(np.int32))
        return results

    def _encode_texts(self, texts: list[str]) -> list[tuple[list[int], list[tuple[int, int]]]]:
        """Token ids and character offsets of rendered chats, as ``tokenizer(texts, add_special_tokens=False)``.

        The tokenizer's call turns every encoding into Python lists of five fields (half the cost of a record
        here). Its first text goes through that call, which also sets the Rust tokenizer up as the call does (no
        truncation or padding, its special-token splitting); the rest go to the same Rust ``encode_batch``.
        """
        first = self.tokenizer(texts[:1], add_special_tokens=False, return_offsets_mapping=True)
        out = [(first["input_ids"][0], first["offset_mapping"][0])]
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if len(texts) > 1 and backend is not None:
            out += [(e.ids, e.offsets) for e in backend.encode_batch(texts[1:], add_special_tokens=False)]
        elif len(texts) > 1:
            rest = self.tokenizer(texts[1:], add_special_tokens=False, return_offsets_mapping=True)
            out += list(zip(rest["input_ids"], rest["offset_mapping"], strict=True))
        return out

    def _render(self, messages: list[dict[str, Any]], add_generation_prompt: bool, chat_template: str,
                with_spans: bool = False, **variables: Any) -> Any:
        from transformers.utils.chat_template_utils import render_jinja_template

        rendered, spans = render_jinja_template(
            conversations=[messages], chat_template=chat_template, add_generation_prompt=add_generation_prompt,
            return_assistant_tokens_mask=with_spans, **self.tokenizer.special_tokens_map, **variables,
        )
        return (rendered[0], spans[0]) if with_spans else rendered[0]

    def _render_batch(self, chats: list[list[dict[str, Any]]], add_generation_prompt: bool,
                      chat_template: str) -> list[Any] | None:
        """Texts and generation spans of many conversations from one render, or None where that cannot be used
        (a template error somewhere in the batch, or text that holds the marks themselves)."""
        if any(mark in m["content"] for messages in chats for m in messages for mark in MARKS):
            return None
        try:
            # transformers' own compiled template (its sandbox, filters and globals), rendered directly: the chats
            # are plain str/dict data already, which its render_jinja_template would copy first.
            from transformers.utils.chat_template_utils import _compile_jinja_template

            rendered = _compile_jinja_template(batch_template(chat_template)).render(
                add_generation_prompt=add_generation_prompt, **self.tokenizer.special_tokens_map,
                **{BATCH_VARIABLE: chats},
            )
        except Exception:  # a template error, or a template that cannot be looped: render one by one
            return None
        pieces = split_marked(rendered)
        return pieces if len(pieces) == len(chats) else None

    def _render_one(self, messages: list[dict[str, Any]], add_generation_prompt: bool,
                    chat_template: str) -> tuple[str, list[tuple[int, int]]]:
        """The rendered conversation and the character spans of its trained (assistant) parts."""
        if has_generation_marks(chat_template):
            return self._render(messages, add_generation_prompt, chat_template, with_spans=True)
        # A template without generation marks: locate the replies by rendering growing prefixes.
        text = self._render(messages, add_generation_prompt, chat_template)

        def render(prefix: list[dict[str, Any]], add_generation_prompt: bool) -> str:
            return self._render(prefix, add_generation_prompt, chat_template) if prefix else ""

        return text, assistant_char_spans(render, messages, text)

    def expand_image_tokens_ids(self, input_ids: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each image token repeated to the M positions the model fills (labels -100 there), as int64 arrays."""
        input_ids = np.asarray(input_ids, dtype=np.int64)
        labels = np.asarray(labels, dtype=np.int64)
        is_image = input_ids == self.image_token_id
        if not is_image.any():
            return input_ids, labels
        repeats = np.where(is_image, self.image_seq_length, 1)
        return np.repeat(input_ids, repeats), np.repeat(np.where(is_image, IGNORE_INDEX, labels), repeats)

    def expand_image_tokens(self, text: str) -> str:
        return text.replace(self.image_token, self.image_token * self.image_seq_length)

    # ---- the call --------------------------------------------------------------------------------------------
    def __call__(
        self,
        text: str | list[str] | None = None,
        images: Image.Image | list[Image.Image] | list[list[Image.Image]] | None = None,
        return_tensors: str | None = "pt",
        **tokenizer_kwargs: Any,
    ) -> BatchFeature:
        """Tokenize ``text`` with each ``<image>`` expanded to M image tokens and preprocess ``images``.

        ``images`` is flat (in placeholder order across the batch) or one list per text. Text-only samples and
        several images per sample can share a batch. A mismatch raises ``ImageTokenError`` naming the sample.
        """
        if text is None:
            raise ValueError("text is required (use '<image>' where each image goes)")
        texts = [text] if isinstance(text, str) else list(text)
        flat_images = self._match_images(texts, images)
        encoded = self.tokenizer(
            [self.expand_image_tokens(t) for t in texts], return_tensors=return_tensors, **tokenizer_kwargs
        )
        data = dict(encoded)
        self._check_tokenized(texts, data["input_ids"])
        if flat_images:
            data["pixel_values"] = pixel_values(self.image_processor, flat_images)
        return BatchFeature(data, tensor_type=return_tensors)

    def _match_images(self, texts: list[str], images: Any) -> list[Image.Image]:
        wanted = [t.count(self.image_token) for t in texts]
        if images is None:
            images = []
        elif isinstance(images, Image.Image):
            images = [images]
        nested = bool(images) and all(isinstance(x, list | tuple) for x in images)
        if nested:
            if len(images) != len(texts):
                raise ImageTokenError(f"got {len(images)} image lists for {len(texts)} texts")
            for index, (count, sample_images) in enumerate(zip(wanted, images, strict=True)):
                if count != len(sample_images):
                    raise ImageTokenError(
                        f"sample {index}: {count} {self.image_token} placeholder(s) but {len(sample_images)} image(s)"
                    )
            return [img for sample_images in images for img in sample_images]
        if sum(wanted) != len(images):
            # Name the first sample whose placeholders run past the images given (else the last sample).
            running = [sum(wanted[: i + 1]) for i in range(len(wanted))]
            index = next((i for i, total in enumerate(running) if total > len(images)), len(wanted) - 1)
            raise ImageTokenError(
                f"sample {index}: the texts hold {sum(wanted)} {self.image_token} placeholder(s) "
                f"(per sample: {wanted}) but {len(images)} image(s) were given"
            )
        return list(images)

    def _check_tokenized(self, texts: list[str], input_ids: Any) -> None:
        """Truncation or a tokenizer that splits the image token must never leave a partial image span."""
        for index, (text, ids) in enumerate(zip(texts, input_ids, strict=True)):
            ids = ids.tolist() if isinstance(ids, torch.Tensor) else ids
            expected = text.count(self.image_token) * self.image_seq_length
            found = sum(1 for i in ids if i == self.image_token_id)
            if found != expected:
                raise ImageTokenError(
                    f"sample {index}: expected {expected} image tokens after tokenization, found {found} "
                    f"(truncated inside an image span, or the text already holds raw image tokens)"
                )

    # ---- decoding --------------------------------------------------------------------------------------------
    def batch_decode(self, *args: Any, **kwargs: Any) -> list[str]:
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args: Any, **kwargs: Any) -> str:
        return self.tokenizer.decode(*args, **kwargs)

    # ---- persistence -----------------------------------------------------------------------------------------
    def save_pretrained(self, save_directory: str | Path) -> None:
        save_directory = Path(save_directory)
        save_directory.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(save_directory)
        self.image_processor.save_pretrained(save_directory)
        config = {
            "processor_class": type(self).__name__,
            "image_token": self.image_token,
            "image_seq_length": self.image_seq_length,
        }
        (save_directory / PROCESSOR_CONFIG).write_text(json.dumps(config, indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, path: str | Path, **kwargs: Any) -> FuseVLMProcessor:
        path = Path(path)
        config_file = path / PROCESSOR_CONFIG
        if not config_file.exists():
            raise FileNotFoundError(f"{path}: no {PROCESSOR_CONFIG}; is this a fusevlm model folder?")
        config = json.loads(config_file.read_text())
        kwargs.pop("trust_remote_code", None)  # our processor never runs remote code
        tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
        image_config = json.loads((path / IMAGE_PROCESSOR_CONFIG).read_text())
        if image_config.get("image_processor_type") == FusedImageProcessor.image_processor_type:
            image_processor = FusedImageProcessor.from_dict(image_config)
        else:
            image_processor = AutoImageProcessor.from_pretrained(path, **kwargs)
        return cls(
            image_processor,
            tokenizer,
            image_seq_length=config["image_seq_length"],
            image_token=config.get("image_token", "<image>"),
            chat_template=tokenizer.chat_template,
        )


__all__ = ["FuseVLMProcessor", "FusedImageProcessor", "ImageTokenError"]
