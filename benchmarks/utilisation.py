"""Model FLOPs utilisation (MFU) of a fusevlm training step, against the matmul rate measured in the same run.

- Peak, two ways (fp32 on CPU, bf16 on CUDA, same threads): the *burst*, the best single large square matmul of
  several; and the *sustained* rate, one size multiplied back to back for several seconds (what a training step's
  matmuls can expect once clocks and caches settle). MFU is given against both.
- FLOPs of one step: counted by ``torch.utils.flop_counter.FlopCounterMode`` over forward + backward (matmuls,
  convolutions and attention; CPU flash attention added with torch's own SDPA formulas, which it lacks). They are
  the FLOPs the model executes: for fusevlm the LM head runs at trained positions only, so the count is lower than
  the full-logits convention; the Llava twin (same weights, same batch) is measured alongside with its own count.
- Time: the median of timed steps (forward + backward + fused AdamW), and of forward + backward alone.

    python benchmarks/utilisation.py [--configs tiny,small,7b-shape] [--batch N] [--threads N] [--quick] [--json PATH]
    python benchmarks/utilisation.py --configs small --sweep 4,8,16   # MFU against the batch size
    python benchmarks/utilisation.py --configs 0.5b --device cuda --dtype bf16   # see gpu.sh
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch
from common import (
    CONFIGS,
    add_device_arguments,
    build_pair,
    config_dict,
    device_settings,
    llava_stage,
    loss_tolerance,
    median,
    on_device,
    place,
    print_table,
    proportions,
    sync,
    timed,
    training_batch,
    write_results,
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


def matmul_peak(device: torch.device, dtype: torch.dtype, sizes: list[int], repeats: int,
                sustain_s: float) -> dict:
    """The burst (best FLOP/s of one n x n @ n x n over ``repeats`` tries per size) and the sustained rate (the
    largest size multiplied back to back for ``sustain_s`` seconds, total FLOPs over total time)."""
    rates = {}
    for n in sizes:
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        a @ b  # warm up
        best = float("inf")
        for _ in range(repeats):
            best = min(best, timed(lambda: a @ b, device))  # noqa: B023 (a, b of this size)
        rates[n] = 2 * n**3 / best
    n = sizes[-1]
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    count, out = 0, torch.empty(n, n, device=device, dtype=dtype)
    sync(device)
    start = time.perf_counter()
    while time.perf_counter() - start < sustain_s:
        torch.matmul(a, b, out=out)
        count += 1
        if device.type == "cuda" and count % 16 == 0:
            sync(device)  # keep the host's clock honest about the queued work
    sync(device)
    elapsed = time.perf_counter() - start
    return {
        "per_size_flops": rates,
        "burst_flops": max(rates.values()),
        "sustained_flops": 2 * n**3 * count / elapsed,
        "sustained": {"size": n, "matmuls": count, "seconds": elapsed},
        "dtype": str(dtype),
    }


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


def run_config(cfg, peak: dict, steps: int, warmup: int, device: torch.device, dtype: torch.dtype,
               attn: str | None) -> dict:
    fuse, llava = build_pair(cfg)
    batch = on_device(training_batch(cfg), device, dtype)
    result = {"config": config_dict(cfg), **proportions(cfg), "tokens_per_step": int(batch["attention_mask"].sum())}
    losses = {}
    for name, model in (("fusevlm", fuse), ("llava", llava)):
        place(model, device, dtype, attn)
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
            "mfu": flops / step_s / peak["sustained_flops"],
            "mfu_of_burst": flops / step_s / peak["burst_flops"],
            "mfu_fwd_bwd_only": flops / fwd_bwd_s / peak["sustained_flops"],
        }
        model.to("cpu")
    diff = abs(losses["fusevlm"] - losses["llava"])
    assert diff <= loss_tolerance(dtype), f"{cfg.name}: losses differ by {diff}"
    result["loss_abs_diff"] = diff
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default="tiny,small,7b-shape")
    parser.add_argument("--batch", type=int, default=None, help="override the configs' batch size")
    parser.add_argument("--sweep", default=None, help="comma-separated batch sizes to try (each config)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--sustain", type=float, default=20.0, help="seconds of back-to-back matmuls (sustained rate)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--quick", action="store_true", help="3 timed steps, a smaller and shorter peak measurement")
    parser.add_argument("--json", default=None, help="write the results here (default: benchmarks/results/)")
    add_device_arguments(parser)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype, attn = device_settings(args)
    if args.quick:
        args.steps, args.warmup, args.sustain = 3, 1, min(args.sustain, 3.0)
    if device.type == "cuda":
        sizes = [4096, 8192] if args.quick else [4096, 8192, 16384]
    else:
        sizes = [1024, 2048] if args.quick else [1024, 2048, 4096]
    peak = matmul_peak(device, dtype, sizes, repeats=3 if args.quick else 5, sustain_s=args.sustain)
    print(f"{peak['dtype']} matmul on {device} ({torch.get_num_threads()} threads): burst "
          f"{peak['burst_flops'] / 1e9:.1f} GFLOP/s, sustained over {peak['sustained']['seconds']:.0f} s "
          f"{peak['sustained_flops'] / 1e9:.1f} GFLOP/s")

    batches = [int(b) for b in args.sweep.split(",")] if args.sweep else [args.batch]
    results = []
    for name in args.configs.split(","):
        for batch_size in batches:
            cfg = CONFIGS[name]
            if batch_size:
                cfg = dataclasses.replace(cfg, batch=batch_size)
            results.append(run_config(cfg, peak, args.steps, args.warmup, device, dtype, attn))

    print_table(
        ["config", "batch", "tokens", "model", "GFLOP/step", "step s", "GFLOP/s", "MFU (sustained)", "MFU (burst)",
         "MFU fwd+bwd", "target"],
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
                f"{100 * r[model]['mfu_of_burst']:.1f}%",
                f"{100 * r[model]['mfu_fwd_bwd_only']:.1f}%",
                f">= {100 * TARGET:.0f}%" if model == "fusevlm" else "",
            ]
            for r in results
            for model in ("fusevlm", "llava")
        ],
    )
    payload = {
        "dtype": str(dtype),
        "attn": attn or "default",
        "threads": torch.get_num_threads(),
        "flop_count": "torch.utils.flop_counter.FlopCounterMode over forward+backward (+ CPU flash-attention "
        "formulas); optimizer FLOPs not counted",
        "peak": peak,
        "results": results,
    }
    write_results("utilisation", payload, args.quick, args.json, device.type)


if __name__ == "__main__":
    main()
