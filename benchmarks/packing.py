"""Sequence packing against padded batching on a mixture with skewed lengths (issue 8: >= 1.5x tokens/s).

Both run full training steps (forward, backward, AdamW) of the same tiny model on the same samples per step, in the
same order, alternating step by step so that a busy machine slows both alike. Effective tokens are the non-pad
tokens: equal for both, so the ratio of tokens/s is the ratio of time. Before timing, per-sample losses of the
packed batches are checked against the padded ones (eval mode, to 1e-5) and the training loss of the first batch
likewise.

The mixture (hand-made, 32 px pictures of one colour): 70% short VQA (one image, a one-word answer), 10% two-image
questions, 20% long captions and multi-turn conversations (up to ``--max-length`` tokens).

    python benchmarks/packing.py [--quick] [--json PATH] [--batch 16] [--max-length 512]
    python benchmarks/packing.py --config 0.5b --max-length 2048 --device cuda --dtype bf16 --attn sdpa  # gpu.sh

``--config NAME`` takes the model's sizes from ``benchmarks/common.py`` instead of the default tiny model (the
tokenizer is trained on the mixture either way).
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from common import (
    CONFIGS,
    add_device_arguments,
    device_settings,
    loss_tolerance,
    place,
    sync,
    write_results,
)
from PIL import Image

from fusevlm import build_vlm
from fusevlm.data.dataset import Source, VLMCollator, load_mixture
from fusevlm.data.packing import PackingCollator, pack_rows, per_sample_losses, without_cache
from fusevlm.data.tokenizer import train_tokenizer

IMAGE_SIZE, PATCH, WIDTH, LAYERS = 32, 8, 64, 2
COLORS = {"red": (220, 30, 30), "green": (30, 180, 30), "blue": (30, 30, 220), "yellow": (230, 220, 20),
          "purple": (145, 40, 190), "orange": (255, 130, 0)}
SHAPES = ("circle", "square", "triangle", "diamond", "cross", "star")
PLACES = ("top left", "top right", "bottom left", "bottom right", "centre")


def sentence(rng: random.Random) -> str:
    return (f"a {rng.choice(sorted(COLORS))} {rng.choice(SHAPES)} sits at the {rng.choice(PLACES)} "
            f"next to a {rng.choice(sorted(COLORS))} {rng.choice(SHAPES)}.")


def write_mixture(root: Path, n: int, max_words: int, seed: int = 0) -> Path:
    rng = random.Random(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(n):
        colors = [rng.choice(sorted(COLORS)) for _ in range(2)]
        files = [f"{i}_{k}.png" for k in range(2)]
        for file, color in zip(files, colors, strict=True):
            Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), COLORS[color]).save(root / "images" / file)
        kind = rng.random()
        if kind < 0.7:
            record = {"image": files[0], "conversations": [
                {"from": "human", "value": "<image>\nWhat color is it?"}, {"from": "gpt", "value": colors[0]}]}
        elif kind < 0.8:
            record = {"images": files, "conversations": [
                {"from": "human", "value": "<image>\n<image>\nSame colour?"},
                {"from": "gpt", "value": "yes" if colors[0] == colors[1] else "no"}]}
        else:
            turns = [{"from": "human", "value": "<image>\nDescribe the image in detail."}]
            words = rng.randint(max_words // 4, max_words)
            for turn in range(rng.randint(1, 3)):
                text = " ".join(sentence(rng) for _ in range(max(1, words // 12)))
                if turn:
                    turns.append({"from": "human", "value": "Tell me more."})
                turns.append({"from": "gpt", "value": text})
            record = {"image": files[0], "conversations": turns}
        record["id"] = str(i)
        records.append(record)
    path = root / "mixture.json"
    path.write_text(json.dumps(records))
    return path


def build_model(root: Path, texts: list[str], max_length: int, cfg: Any = None) -> tuple[Any, Any]:
    """By default a 64-wide 2-layer CLIP tower (32 px, patch 8: 16 image tokens), mlp2x_gelu, a 64-wide 2-layer
    Llama; with ``cfg`` (a ``common.BenchConfig``) its tower and LM sizes."""
    from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

    tokenizer = train_tokenizer(texts, root / "llm", vocab_size=512)
    torch.manual_seed(0)
    if cfg is None:
        vision = dict(hidden_size=WIDTH, intermediate_size=2 * WIDTH, num_hidden_layers=LAYERS,
                      num_attention_heads=4, image_size=IMAGE_SIZE, patch_size=PATCH)
        text = dict(hidden_size=WIDTH, intermediate_size=2 * WIDTH, num_hidden_layers=LAYERS, num_attention_heads=4,
                    num_key_value_heads=4)
    else:
        vision = dict(hidden_size=cfg.vision_hidden, intermediate_size=4 * cfg.vision_hidden,
                      num_hidden_layers=cfg.vision_layers, num_attention_heads=cfg.vision_heads,
                      image_size=cfg.image_size, patch_size=cfg.patch)
        text = dict(hidden_size=cfg.hidden, intermediate_size=cfg.intermediate, num_hidden_layers=cfg.layers,
                    num_attention_heads=cfg.heads, num_key_value_heads=cfg.kv_heads)
    CLIPVisionModel(CLIPVisionConfig(**vision)).save_pretrained(root / "vision")
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), max_position_embeddings=max_length, bos_token_id=None,
                                 eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **text,
                                 )).save_pretrained(root / "llm")
    return build_vlm(str(root / "vision"), "mlp2x_gelu", str(root / "llm"))


def to_device(batch: dict[str, Any], device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    moved = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
    if torch.is_tensor(moved.get("pixel_values")):
        moved["pixel_values"] = moved["pixel_values"].to(dtype)
    return moved


def model_inputs(batch: dict[str, Any]) -> dict[str, Any]:
    keys = ("input_ids", "labels", "attention_mask", "position_ids", "pixel_values")
    return {k: batch[k] for k in keys if k in batch}


def check_losses(model: Any, features: list[dict], padded: dict, packed: dict, max_length: int,
                 tolerance: float) -> dict:
    """Per-sample losses (eval mode) and the training loss: packed equal padded."""
    order = [i for row in pack_rows([len(f["input_ids"]) for f in features], max_length) for i in row]
    B, T = padded["input_ids"].shape
    model.eval()
    with torch.no_grad():
        ref = model(input_ids=padded["input_ids"], pixel_values=padded.get("pixel_values"),
                    attention_mask=padded["attention_mask"]).logits
        rows = torch.arange(B, device=ref.device)[:, None].expand(B, T)
        ref_sums, ref_counts = per_sample_losses(ref, padded["labels"], rows, B)
        out = model(input_ids=packed["input_ids"], pixel_values=packed.get("pixel_values"),
                    position_ids=packed["position_ids"], use_cache=False).logits
        sums, counts = per_sample_losses(out, packed["labels"], packed["sample_index"], B)
    assert torch.equal(counts, ref_counts[torch.tensor(order, device=counts.device)]), \
        "packing changed which tokens are trained"
    per_sample = ((sums / counts) - (ref_sums / ref_counts)[torch.tensor(order, device=sums.device)]).abs().max().item()
    model.train()
    with torch.no_grad(), without_cache(model):
        train_diff = (model(**model_inputs(packed)).loss - model(**model_inputs(padded)).loss).abs().item()
    assert per_sample <= tolerance and train_diff <= tolerance, (per_sample, train_diff)
    return {"max_per_sample_loss_diff": per_sample, "train_loss_diff": train_diff}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps (a noisy, shared machine)")
    parser.add_argument("--json", type=Path, help="write the results here (default: benchmarks/results/)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's; 1 with --quick, as a busy "
                        "machine's oversubscribed OpenMP threads can slow a step 10x)")
    parser.add_argument("--batch", type=int, default=16, help="samples per step, the same for both")
    parser.add_argument("--max-length", type=int, default=512, help="model_max_length: the packed row length")
    parser.add_argument("--steps", type=int, help="timed steps per mode (default 8 quick, 40 full)")
    parser.add_argument("--config", choices=sorted(CONFIGS), help="model sizes (default: the tiny model above)")
    add_device_arguments(parser)
    args = parser.parse_args()
    device, dtype, attn = device_settings(args)
    if args.threads or args.quick:
        torch.set_num_threads(args.threads or 1)
    steps = args.steps or (8 if args.quick else 40)
    warmup = 2
    total = args.batch * (steps + warmup)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        path = write_mixture(root / "data", total, max_words=args.max_length // 2)
        texts = [t["value"] for r in json.loads(path.read_text()) for t in r["conversations"]]
        model, processor = build_model(root / "parts", texts, args.max_length,
                                       CONFIGS[args.config] if args.config else None)
        place(model, device, dtype, attn)
        source = Source(str(path), image_root=str(root / "data" / "images"))
        dataset = load_mixture([source], processor, model_max_length=args.max_length, cache_dir=root / "cache")
        order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0)).tolist()
        samples = [dataset[i] for i in order]

    pad_id = processor.tokenizer.pad_token_id
    padder, packer = VLMCollator(pad_token_id=pad_id), PackingCollator(pad_id, args.max_length)
    steps_data = []
    for s in range(steps + warmup):
        features = samples[s * args.batch : (s + 1) * args.batch]
        steps_data.append((features, to_device(padder(features), device, dtype),
                           to_device(packer(features), device, dtype)))
    check = check_losses(model, *steps_data[0], args.max_length, loss_tolerance(dtype))

    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    times: dict[str, list[float]] = {"padded": [], "packed": []}
    stats = {"padded": {"computed": 0, "real": 0}, "packed": {"computed": 0, "real": 0}}
    with without_cache(model):
        for s, (_, padded, packed) in enumerate(steps_data):
            pair = [("padded", padded), ("packed", packed)]
            for name, batch in pair if s % 2 else pair[::-1]:  # alternate which goes first
                inputs = model_inputs(batch)
                sync(device)
                started = time.perf_counter()
                model(**inputs).loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                sync(device)
                elapsed = time.perf_counter() - started
                if s >= warmup:
                    times[name].append(elapsed)
                    stats[name]["computed"] += batch["input_ids"].numel()
                    real = batch["attention_mask"] if name == "padded" else batch["sample_index"] >= 0
                    stats[name]["real"] += int(real.sum())

    rows = {}
    for name in ("padded", "packed"):
        seconds = sum(times[name])
        rows[name] = {
            "tokens_per_s": stats[name]["real"] / seconds,
            "median_step_s": statistics.median(times[name]),
            "computed_tokens": stats[name]["computed"],
            "real_tokens": stats[name]["real"],
            "pad_fraction": 1 - stats[name]["real"] / stats[name]["computed"],
        }
    assert rows["padded"]["real_tokens"] == rows["packed"]["real_tokens"]
    ratio = rows["packed"]["tokens_per_s"] / rows["padded"]["tokens_per_s"]
    lengths = [len(f["input_ids"]) for f in samples]

    model_name = args.config or f"tiny ({WIDTH}-wide {LAYERS}+{LAYERS} layers)"
    print(f"\nmachine: {platform.machine()}, {device}, {dtype}, {torch.get_num_threads()} torch threads; {model_name}, "
          f"{processor.image_seq_length} image tokens; {args.batch} samples/step, "
          f"{steps} timed steps each; rows of <= {args.max_length} tokens")
    print(f"sample lengths: median {statistics.median(lengths):.0f}, max {max(lengths)}, "
          f"mean {statistics.mean(lengths):.0f} tokens")
    print(f"losses: per-sample max |packed - padded| {check['max_per_sample_loss_diff']:.2e}, "
          f"training loss {check['train_loss_diff']:.2e}")
    print(f"{'batching':<10}{'tokens/s':>11}{'median step s':>15}{'pad fraction':>14}")
    for name, row in rows.items():
        print(f"{name:<10}{row['tokens_per_s']:>11.0f}{row['median_step_s']:>15.4f}{row['pad_fraction']:>14.2f}")
    print(f"packed / padded effective tokens/s: {ratio:.2f}x (target >= 1.5x): {'met' if ratio >= 1.5 else 'NOT met'}")
    payload = {"config": args.config or "tiny (packing.py)", "batch": args.batch, "max_length": args.max_length,
               "steps": steps, "dtype": str(dtype), "attn": attn or "default", "threads": torch.get_num_threads(),
               "losses": check, "padded": rows["padded"], "packed": rows["packed"], "ratio": ratio}
    write_results("packing", payload, args.quick, args.json, device.type)


if __name__ == "__main__":
    main()
