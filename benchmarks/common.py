"""Shared pieces of the benchmark scripts: the configs, a fusevlm model and its transformers Llava twin with
identical weights (mapped by ``fusevlm.export``), LLaVA-style batches, timing and table/JSON output.

Not a test module: the scripts in this folder are run by hand (``python benchmarks/<script>.py``).
"""

from __future__ import annotations

import datetime
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
    # ~48M parameters, vocab 32000 (Llama-2's), 8 rows of 1+64+48+48 tokens: a step takes about a second on 2 cores.
    # Its LM head is 1.3x the FLOPs of the 4 decoder layers, so skipping the head at untrained positions is most of
    # what a training step saves here: far from a 7B model's proportions (see 7b-shape).
    "small": BenchConfig("small", 256, 4, 4, 112, 14, 512, 4, 8, 4, 1376, 32000, 8, 48, 48),
    # LLaVA-1.5-7B's proportions at 1/8 of Vicuna-7B's width and depth (512 wide, 4 layers, the same 2.69x MLP and
    # 128-wide heads, no GQA): the vocabulary shrinks with width x depth / width = 64x (32000 -> 500), so the head
    # is 2.0% of the decoder's matmul FLOPs per token, as in Vicuna-7B (4096 x 32000 against 32 layers of 4096 x
    # 4096 x 4 + 3 x 4096 x 11008). The sequence keeps LLaVA-1.5's image share: 64 image tokens of ~87 (0.74; LLaVA:
    # 576 of ~780 on an instruct sample with one image, assumed), ~12% of them trained (the answers). The tower is a
    # small CLIP: in LLaVA-1.5 the frozen ViT-L runs forward only, ~1% of a step's FLOPs.
    "7b-shape": BenchConfig("7b-shape", 128, 2, 2, 64, 8, 512, 4, 4, 4, 1376, 500, 8, 8, 14),
    # ~0.5B parameters for GPUs (benchmarks/gpu.sh): CLIP ViT-B-wide at 336 px / 14 (576 image tokens, as LLaVA-1.5),
    # a 1280-wide 20-layer Llama, vocab 32000; 8 rows of 1+576+64+128 tokens.
    "0.5b": BenchConfig("0.5b", 768, 12, 12, 336, 14, 1280, 20, 20, 20, 3584, 32000, 8, 64, 128),
}

# Vicuna-7B (LLaVA-1.5-7B's LM), for the proportions 7b-shape keeps.
VICUNA_7B = {"hidden": 4096, "layers": 32, "intermediate": 11008, "vocab": 32000, "kv_hidden": 4096}


def head_to_body_flops(hidden: int, layers: int, intermediate: int, vocab: int, kv_hidden: int) -> float:
    """The LM head's matmul FLOPs per token over the decoder layers' (q, k, v, o and the gated MLP)."""
    per_layer = 2 * hidden * hidden + 2 * hidden * kv_hidden + 3 * hidden * intermediate
    return hidden * vocab / (layers * per_layer)


def proportions(cfg: BenchConfig) -> dict[str, float]:
    """What sets the fast loss path's gain: the head's FLOP share, and how much of a batch is images / trained."""
    batch = training_batch(cfg)
    real = int(batch["attention_mask"].sum())
    return {
        "head_to_body_flops": head_to_body_flops(cfg.hidden, cfg.layers, cfg.intermediate, cfg.vocab,
                                                 cfg.kv_heads * cfg.hidden // cfg.heads),
        "image_token_share": cfg.batch * cfg.image_tokens / real,
        "trained_share": int((batch["labels"][:, 1:] != IGNORE_INDEX).sum()) / real,
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


def equal_work(model: FuseVLMForConditionalGeneration) -> FuseVLMForConditionalGeneration:
    """Turn off the fast loss path (LM head and cross-entropy at trained positions only): the model then computes
    full logits in training, as Llava does, so a ratio measures the framework rather than the work skipped."""
    model.trains_at_labelled_positions = lambda: False  # an instance attribute shadows the method
    return model


# ---- devices ----------------------------------------------------------------------------------------------------
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def add_device_arguments(parser: Any) -> None:
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default: bf16 on CUDA, fp32 on CPU")
    parser.add_argument("--attn", default=None, choices=("eager", "sdpa", "flash_attention_2"),
                        help="attention implementation of both models (default: transformers' choice)")


def device_settings(args: Any) -> tuple[torch.device, torch.dtype, str | None]:
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype or ("bf16" if device.type == "cuda" else "fp32")]
    if args.attn == "flash_attention_2":
        from transformers.utils import is_flash_attn_2_available

        if not is_flash_attn_2_available():
            raise SystemExit("--attn flash_attention_2: the flash-attn package is not installed (or no CUDA)")
    return device, dtype, args.attn


def place(model: nn.Module, device: torch.device, dtype: torch.dtype, attn: str | None) -> nn.Module:
    if attn is not None:
        model.set_attn_implementation(attn)
    return model.to(device=device, dtype=dtype)


def on_device(batch: dict[str, torch.Tensor], device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    batch = {k: v.to(device) for k, v in batch.items()}
    if "pixel_values" in batch:
        batch["pixel_values"] = batch["pixel_values"].to(dtype)
    return batch


def loss_tolerance(dtype: torch.dtype) -> float:
    """How far two equal computations' losses may drift: fp32 rounding, or bf16's 8-bit mantissa."""
    return 1e-5 if dtype == torch.float32 else 2e-2


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


# ---- timing and output ----------------------------------------------------------------------------------------
def timed(fn: Any, device: torch.device | None = None) -> float:
    if device is not None:
        sync(device)
    start = time.perf_counter()
    fn()
    if device is not None:
        sync(device)
    return time.perf_counter() - start


def median(values: list[float]) -> float:
    return statistics.median(values)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    """What a figure was measured on, stored with it."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu_model": cpu_model(),
        "cpu_cores": cores,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "cuda_runtime": torch.version.cuda,
        "python": platform.python_version(),
        "platform": platform.platform(),
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


RESULTS = Path(__file__).parent / "results"


def write_results(benchmark: str, payload: dict[str, Any], quick: bool, path: str | Path | None = None,
                  device: str = "cpu") -> Path:
    """The run's JSON, with the machine it ran on: ``benchmarks/results/<benchmark>.<device>[.quick].json`` unless
    ``path`` says otherwise. ``benchmarks/report.py`` builds the README's table from these files; a quick run's file
    says ``"quick": true`` and the table marks it so."""
    if path is None:
        path = RESULTS / f"{benchmark}.{device}{'.quick' if quick else ''}.json"
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"benchmark": benchmark, "quick": quick, "device": device, "machine": machine(), **payload}
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {path}")
    return path


def config_dict(cfg: BenchConfig) -> dict[str, Any]:
    return {**asdict(cfg), "image_tokens": cfg.image_tokens, "seq_len": cfg.seq_len}
