"""Training step time: fusevlm vs transformers' LlavaForConditionalGeneration, same weights, batch and optimizer.

Both models are built from one config (CLIP tower, mlp2x_gelu projector, Llama LM); the Llava one gets the
fusevlm weights through ``fusevlm.export``'s key mapping. Both train LLaVA-1.5's instruct stage (tower frozen)
with fused AdamW (the HF Trainer's default optimizer) on the same LLaVA-style batch (labels -100 on image and
prompt tokens). The step-0 losses must agree to 1e-5; then forward + backward + optimizer step is timed, the two
models interleaved (alternating which goes first), and the median step times and their ratio are printed.

    python benchmarks/train_step.py [--configs tiny,small] [--steps 20] [--quick] [--json out/train_step.json]
    python benchmarks/train_step.py --configs small --profile   # torch.profiler's top ops of one step of each
"""

from __future__ import annotations

import argparse

import torch
from common import (
    build_pair,
    config_dict,
    count_params,
    llava_stage,
    median,
    parse_configs,
    print_table,
    timed,
    training_batch,
    write_json,
)

TARGET = 0.9


def make_step(model: torch.nn.Module, batch: dict[str, torch.Tensor], lr: float = 1e-4):
    # fused AdamW: the HF Trainer's default optimizer ("adamw_torch_fused"), for both models
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, fused=True)
    losses: list[float] = []

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        losses.append(loss.item())

    return step, losses


def run_config(cfg, steps: int, warmup: int) -> dict:
    fuse, llava = build_pair(cfg)
    for model in (fuse, llava):
        llava_stage(model)
        model.train()
    batch = training_batch(cfg)
    trained = int((batch["labels"][:, 1:] != -100).sum())

    fuse_step, fuse_losses = make_step(fuse, batch)
    llava_step, llava_losses = make_step(llava, batch)
    times = {"fusevlm": [], "llava": []}
    for i in range(warmup + steps):
        order = [("fusevlm", fuse_step), ("llava", llava_step)]
        for name, step in order if i % 2 == 0 else order[::-1]:
            seconds = timed(step)
            if i >= warmup:
                times[name].append(seconds)
        if i == 0:
            diff = abs(fuse_losses[0] - llava_losses[0])
            assert diff <= 1e-5, f"{cfg.name}: step-0 losses differ by {diff} ({fuse_losses[0]} vs {llava_losses[0]})"
    fuse_median, llava_median = median(times["fusevlm"]), median(times["llava"])
    return {
        "config": config_dict(cfg),
        "params": count_params(fuse),
        "trainable_params": sum(p.numel() for p in fuse.parameters() if p.requires_grad),
        "tokens_per_step": int(batch["attention_mask"].sum()),
        "trained_tokens_per_step": trained,
        "fusevlm_fast_loss": fuse.trains_at_labelled_positions(),
        "step0_loss": {"fusevlm": fuse_losses[0], "llava": llava_losses[0]},
        "step0_loss_abs_diff": abs(fuse_losses[0] - llava_losses[0]),
        "max_loss_abs_diff_over_steps": max(abs(a - b) for a, b in zip(fuse_losses, llava_losses, strict=True)),
        "steps_timed": steps,
        "median_step_s": {"fusevlm": fuse_median, "llava": llava_median},
        "all_step_s": times,
        "ratio_fusevlm_over_llava": fuse_median / llava_median,
        "target_ratio": TARGET,
    }


def profile(cfg, row_limit: int = 25) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    fuse, llava = build_pair(cfg)
    batch = training_batch(cfg)
    for name, model in (("fusevlm", fuse), ("llava", llava)):
        llava_stage(model)
        model.train()
        step, _ = make_step(model, batch)
        step()  # warm up
        with torch_profile(activities=[ProfilerActivity.CPU], record_shapes=False) as prof:
            step()
        print(f"\n=== {name} @ {cfg.name}: top ops by self CPU time ===")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=row_limit))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default="tiny,small")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per model (>= 20 for the record)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--quick", action="store_true", help="6 timed steps after 1 warm-up: a smoke run")
    parser.add_argument("--profile", action="store_true", help="print torch.profiler tables instead of timing")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.steps, args.warmup = 6, 1
    configs = parse_configs(args.configs)
    if args.profile:
        for cfg in configs:
            profile(cfg)
        return

    results = [run_config(cfg, args.steps, args.warmup) for cfg in configs]
    print_table(
        ["config", "params", "tokens", "trained", "step-0 loss diff", "max loss diff", "fusevlm s", "llava s", "ratio",
         "target"],
        [
            [
                r["config"]["name"],
                f"{r['params'] / 1e6:.1f}M",
                r["tokens_per_step"],
                r["trained_tokens_per_step"],
                f"{r['step0_loss_abs_diff']:.1e}",
                f"{r['max_loss_abs_diff_over_steps']:.1e}",
                r["median_step_s"]["fusevlm"],
                r["median_step_s"]["llava"],
                f"{r['ratio_fusevlm_over_llava']:.3f}",
                f"<= {TARGET}",
            ]
            for r in results
        ],
    )
    write_json(args.json, {"benchmark": "train_step", "quick": args.quick, "results": results})


if __name__ == "__main__":
    main()
