"""Shared pieces of the benchmark scripts: the configs, a fusevlm model and its transformers Llava twin with
identical weights (mapped by ``fusevlm.export``), LLaVA-style batches, timing and table/JSON output.

Not a test module: the scripts in this folder are run by hand (``python benchmarks/<script>.py``).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import CLIPVisionConfig, LlamaConfig, LlavaForConditionalGeneration

from fusevlm.export import to_llava
from fusevlm.models.configuration import FuseVLMConfig
from fusevlm.models.vlm import FuseVLMForConditionalGeneration

IGNORE_INDEX = -100


@dataclass(frozen=True)
class BenchConfig:
    """A CLIP tower, an mlp2x_gelu projector and a Llama LM, plus the batch shape a step trains on."""

    name: str
    vision_hidden: int
    vision_layers: int
    vision_heads: int
    image_size: int
    patch: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    batch: int
    prompt: int  # text tokens before the answer (besides the image tokens)
    answer: int  # the longest answer; answers vary in length down to answer // 2 (right padding)

    @property
    def image_tokens(self) -> int:
        return (self.image_size // self.patch) ** 2

    @property
    def seq_len(self) -> int:
        return 1 + self.image_tokens + self.prompt + self.answer


CONFIGS = {
    # ~0.3M parameters: framework overhead dominates
    "tiny": BenchConfig("tiny", 64, 2, 2, 32, 8, 64, 2, 4, 2, 128, 1000, 4, 16, 16),
    # ~48M parameters, vocab 32000 (Llama-2's), 8 rows of 1+64+48+48 tokens: a step takes about a second on 2 cores
    "small": BenchConfig("small", 256, 4, 4, 112, 14, 512, 4, 8, 4, 1376, 32000, 8, 48, 48),
}


def parse_configs(names: str) -> list[BenchConfig]:
    return [CONFIGS[name] for name in names.split(",")]


def fusevlm_config(cfg: BenchConfig) -> FuseVLMConfig:
    vision = CLIPVisionConfig(
        hidden_size=cfg.vision_hidden,
        intermediate_size=4 * cfg.vision_hidden,
        num_hidden_layers=cfg.vision_layers,
        num_attention_heads=cfg.vision_heads,
        image_size=cfg.image_size,
        patch_size=cfg.patch,
    )
    text = LlamaConfig(
        vocab_size=cfg.vocab,
        hidden_size=cfg.hidden,
        intermediate_size=cfg.intermediate,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        num_key_value_heads=cfg.kv_heads,
        max_position_embeddings=max(512, cfg.seq_len * 4),
        tie_word_embeddings=False,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    return FuseVLMConfig(
        vision_config={"encoder": "clip", "config": vision.to_dict(), "feature_layer": -2, "feature_select": "patch"},
        projector_config={"type": "mlp2x_gelu"},
        text_config=text,
        image_token_id=cfg.vocab - 1,  # a reserved id: no text token uses it
    )


def build_pair(cfg: BenchConfig, seed: int = 0) -> tuple[FuseVLMForConditionalGeneration, LlavaForConditionalGeneration]:
    """A fusevlm model and the transformers Llava model with the same weights, mapped by ``fusevlm.export``."""
    torch.manual_seed(seed)
    model = FuseVLMForConditionalGeneration(fusevlm_config(cfg)).float()
    llava = to_llava(model)
    for m in (model, llava):
        m.generation_config.pad_token_id = 0
        for module in m.modules():  # identical numerics in train mode (the configs have no dropout anyway)
            if isinstance(module, nn.Dropout):
                module.p = 0.0
    return model, llava


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def llava_stage(model: nn.Module) -> None:
    """LLaVA-1.5's instruct stage: the vision tower frozen, the projector and the whole LM trained."""
    for name, param in model.named_parameters():
        param.requires_grad_("vision_tower" not in name)


def training_batch(cfg: BenchConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """A LLaVA-style batch: BOS, the image tokens, a prompt, an answer of varying length, right padding.

    Labels are -100 on BOS, image, prompt and padding tokens: only the answer is trained (as in LLaVA's
    conversations, where the answer is a fraction of the sequence).
    """
    g = torch.Generator().manual_seed(seed)
    image_id = cfg.vocab - 1
    rows, labels, masks = [], [], []
    for row in range(cfg.batch):
        answer = cfg.answer - (row * (cfg.answer // 2)) // max(cfg.batch - 1, 1)
        text = torch.randint(3, cfg.vocab - 1, (cfg.prompt + answer,), generator=g)
        ids = torch.cat([torch.tensor([1]), torch.full((cfg.image_tokens,), image_id), text])
        lab = ids.clone()
        lab[: 1 + cfg.image_tokens + cfg.prompt] = IGNORE_INDEX
        pad = cfg.seq_len - len(ids)
        rows.append(torch.cat([ids, torch.zeros(pad, dtype=torch.long)]))
        labels.append(torch.cat([lab, torch.full((pad,), IGNORE_INDEX)]))
        masks.append(torch.cat([torch.ones(len(ids), dtype=torch.long), torch.zeros(pad, dtype=torch.long)]))
    pixel_values = torch.randn(cfg.batch, 3, cfg.image_size, cfg.image_size, generator=g)
    return {
        "input_ids": torch.stack(rows),
        "attention_mask": torch.stack(masks),
        "pixel_values": pixel_values,
        "labels": torch.stack(labels),
    }


def generation_prompts(cfg: BenchConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """Left-padded prompts (BOS, image tokens, a prompt of varying length) for batched generation."""
    g = torch.Generator().manual_seed(seed)
    image_id = cfg.vocab - 1
    rows = []
    for row in range(cfg.batch):
        n = cfg.prompt - (row * (cfg.prompt // 2)) // max(cfg.batch - 1, 1)
        text = torch.randint(3, cfg.vocab - 1, (n,), generator=g)
        rows.append(torch.cat([torch.tensor([1]), torch.full((cfg.image_tokens,), image_id), text]))
    width = max(len(r) for r in rows)
    input_ids = torch.stack([torch.cat([torch.zeros(width - len(r), dtype=torch.long), r]) for r in rows])
    mask = torch.stack([(torch.arange(width) >= width - len(r)).long() for r in rows])
    pixel_values = torch.randn(cfg.batch, 3, cfg.image_size, cfg.image_size, generator=g)
    return {"input_ids": input_ids, "attention_mask": mask, "pixel_values": pixel_values}


# ---- timing and output ----------------------------------------------------------------------------------------
def timed(fn: Any) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def median(values: list[float]) -> float:
    return statistics.median(values)


def machine() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }


def print_table(headers: list[str], rows: list[list[Any]]) -> None:
    def fmt(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.4g}"
        return str(value)

    cells = [[fmt(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))


def write_json(path: str | None, payload: dict[str, Any]) -> None:
    if not path:
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps({"machine": machine(), **payload}, indent=2))
    print(f"wrote {path}")


def config_dict(cfg: BenchConfig) -> dict[str, Any]:
    return {**asdict(cfg), "image_tokens": cfg.image_tokens, "seq_len": cfg.seq_len}
