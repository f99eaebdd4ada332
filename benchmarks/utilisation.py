"""Model FLOPs utilisation (MFU) of a fusevlm training step, against the matmul peak measured in the same run.

- Peak: the best rate of large square matmuls (fp32 on CPU, bf16 on CUDA), best of several, same threads.
- FLOPs of one step: counted by ``torch.utils.flop_counter.FlopCounterMode`` over forward + backward (matmuls,
  convolutions and attention; CPU flash attention added with torch's own SDPA formulas, which it lacks). They are
  the FLOPs the model executes: for fusevlm the LM head runs at trained positions only, so the count is lower than
  the full-logits convention; the Llava twin (same weights, same batch) is measured alongside with its own count.
- Time: the median of timed steps (forward + backward + fused AdamW), and of forward + backward alone.

    python benchmarks/utilisation.py [--configs tiny,small] [--batch N] [--threads N] [--quick] [--json PATH]
    python benchmarks/utilisation.py --configs small --sweep 4,8,16   # MFU against the batch size
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch
from common import (
    CONFIGS,
    build_pair,
    config_dict,
    llava_stage,
    median,
    print_table,
    training_batch,
    write_json,
)
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

TARGET = 0.5


def _cpu_sdpa(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query, key, value)


def _cpu_sdpa_backward(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out, query, key, value)


CUSTOM_FLOPS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_sdpa_backward,
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_peak(device: torch.device, dtype: torch.dtype, sizes: list[int], repeats: int) -> dict:
    """Best FLOP/s of n x n @ n x n over ``repeats`` tries per size."""
    rates = {}
    for n in sizes:
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        a @ b  # warm up
        best = float("inf")
        for _ in range(repeats):
            sync(device)
            start = time.perf_counter()
            a @ b
            sync(device)
            best = min(best, time.perf_counter() - start)
        rates[n] = 2 * n**3 / best
    return {"per_size_flops": rates, "peak_flops": max(rates.values()), "dtype": str(dtype)}


def count_flops(model, batch) -> int:
    counter = FlopCounterMode(display=False, custom_mapping=CUSTOM_FLOPS)
    with counter:
        model(**batch).loss.backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def time_steps(model, batch, steps: int, warmup: int, device: torch.device) -> tuple[float, float]:
    """Median seconds of (forward + backward + AdamW step) and of (forward + backward)."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, fused=True)
    full, fwd_bwd = [], []
    for i in range(warmup + steps):
        optimizer.zero_grad(set_to_none=True)
        sync(device)
        start = time.perf_counter()
        model(**batch).loss.backward()
        sync(device)
        middle = time.perf_counter()
        optimizer.step()
        sync(device)
        end = time.perf_counter()
        if i >= warmup:
            full.append(end - start)
            fwd_bwd.append(middle - start)
    return median(full), median(fwd_bwd)


def run_config(cfg, peak: float, steps: int, warmup: int, device: torch.device, dtype: torch.dtype) -> dict:
    fuse, llava = build_pair(cfg)
    batch = {k: v.to(device) for k, v in training_batch(cfg).items()}
    batch["pixel_values"] = batch["pixel_values"].to(dtype)
    result = {"config": config_dict(cfg), "tokens_per_step": int(batch["attention_mask"].sum())}
    losses = {}
    for name, model in (("fusevlm", fuse), ("llava", llava)):
        model.to(device=device, dtype=dtype)
        llava_stage(model)
        model.train()
        with torch.no_grad():
            losses[name] = model(**batch).loss.item()
        flops = count_flops(model, batch)
        step_s, fwd_bwd_s = time_steps(model, batch, steps, warmup, device)
        result[name] = {
            "flops_per_step": flops,
            "median_step_s": step_s,
            "median_fwd_bwd_s": fwd_bwd_s,
            "achieved_flops": flops / step_s,
            "mfu": flops / step_s / peak,
            "mfu_fwd_bwd_only": flops / fwd_bwd_s / peak,
        }
        model.to("cpu")
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2
    diff = abs(losses["fusevlm"] - losses["llava"])
    assert diff <= tolerance, f"{cfg.name}: losses differ by {diff}"
    result["loss_abs_diff"] = diff
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default="tiny,small")
    parser.add_argument("--batch", type=int, default=None, help="override the configs' batch size")
    parser.add_argument("--sweep", default=None, help="comma-separated batch sizes to try (each config)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--quick", action="store_true", help="3 timed steps, a smaller peak measurement")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if args.quick:
        args.steps, args.warmup = 3, 1
    if device.type == "cuda":
        sizes = [4096, 8192] if args.quick else [4096, 8192, 16384]
    else:
        sizes = [1024, 2048] if args.quick else [1024, 2048, 4096]
    peak = matmul_peak(device, dtype, sizes, repeats=3 if args.quick else 5)
    print(f"measured {peak['dtype']} matmul peak on {device}: {peak['peak_flops'] / 1e9:.1f} GFLOP/s "
          f"(threads: {torch.get_num_threads()})")

    batches = [int(b) for b in args.sweep.split(",")] if args.sweep else [args.batch]
    results = []
    for name in args.configs.split(","):
        for batch_size in batches:
            cfg = CONFIGS[name]
            if batch_size:
                cfg = dataclasses.replace(cfg, batch=batch_size)
            results.append(run_config(cfg, peak["peak_flops"], args.steps, args.warmup, device, dtype))

    print_table(
        ["config", "batch", "tokens", "model", "GFLOP/step", "step s", "GFLOP/s", "MFU", "MFU fwd+bwd", "target"],
        [
            [
                r["config"]["name"],
                r["config"]["batch"],
                r["tokens_per_step"],
                model,
                r[model]["flops_per_step"] / 1e9,
                r[model]["median_step_s"],
                r[model]["achieved_flops"] / 1e9,
                f"{100 * r[model]['mfu']:.1f}%",
                f"{100 * r[model]['mfu_fwd_bwd_only']:.1f}%",
                f">= {100 * TARGET:.0f}%" if model == "fusevlm" else "",
            ]
            for r in results
            for model in ("fusevlm", "llava")
        ],
    )
    write_json(
        args.json,
        {
            "benchmark": "utilisation",
            "quick": args.quick,
            "device": str(device),
            "dtype": str(dtype),
            "flop_count": "torch.utils.flop_counter.FlopCounterMode over forward+backward (+ CPU flash-attention "
            "formulas); optimizer FLOPs not counted",
            "peak": peak,
            "results": results,
        },
    )


if __name__ == "__main__":
    main()
