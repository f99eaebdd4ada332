"""``fusevlm merge``: a LoRA run's adapter (with its trained projector) folded into its base model, as one folder."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..models.vlm import FuseVLMForConditionalGeneration
from ..processing import FuseVLMProcessor


def adapter_base(adapter_dir: Path) -> Path:
    """The base model folder an adapter was trained on, as PEFT recorded it."""
    config_file = adapter_dir / "adapter_config.json"
    if not config_file.exists():
        raise FileNotFoundError(f"{adapter_dir}: no adapter_config.json; is this a LoRA adapter folder?")
    base = json.loads(config_file.read_text()).get("base_model_name_or_path")
    if not base:
        raise ValueError(f"{config_file}: records no base model; pass --base")
    return Path(base)


def merge_lora(adapter_dir: str | Path, out_dir: str | Path, base_dir: str | Path | None = None) -> Path:
    """Load base + adapter, merge the LoRA deltas into the LLM, keep the adapter's projector, save one folder."""
    from peft import PeftModel

    adapter_dir, out_dir = Path(adapter_dir), Path(out_dir)
    base_dir = Path(base_dir) if base_dir is not None else adapter_base(adapter_dir)
    base = FuseVLMForConditionalGeneration.from_pretrained(base_dir)
    merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    merged.save_pretrained(out_dir)
    FuseVLMProcessor.from_pretrained(base_dir).save_pretrained(out_dir)
    return out_dir


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--adapter", required=True, type=Path, help="a LoRA adapter folder (a run's adapter/)")
    parser.add_argument("--base", type=Path, default=None, help="the base model folder (default: as recorded)")
    parser.add_argument("--out", required=True, type=Path, help="the merged model folder to write")
    return parser


def run(args: argparse.Namespace) -> int:
    out = merge_lora(args.adapter, args.out, args.base)
    print(f"merged model: {out}")
    return 0
