"""Training step time: fusevlm vs transformers' LlavaForConditionalGeneration, same weights, batch and optimizer.

Both models are built from one config (CLIP tower, mlp2x_gelu projector, Llama LM); the Llava one gets the
fusevlm weights through ``fusevlm.export``'s key mapping. Both train LLaVA-1.5's instruct stage (tower frozen)
with fused AdamW (the HF Trainer's default optimizer) on the same LLaVA-style batch (labels -100 on image and
prompt tokens). fusevlm runs twice: as it trains (the LM head and the cross-entropy at trained positions only) and
with that fast loss path off (full logits, the work Llava does: "equal work"). The step-0 losses must agree; then
forward + backward + optimizer step is timed, the three models interleaved (rotating which goes first), and the
median step times and their ratios to Llava are printed, with what sets the fast path's gain: the head's share of
the LM's FLOPs per token and the share of trained tokens (``7b-shape`` keeps LLaVA-1.5-7B's).

    python benchmarks/train_step.py [--configs tiny,small,7b-shape] [--steps 20] [--quick] [--json PATH]
    python benchmarks/train_step.py --configs 0.5b --device cuda --dtype bf16 --attn sdpa   # see gpu.sh
    python benchmarks/train_step.py --configs small --profile   # torch.profiler's top ops of one step of each
"""

from __future__ import annotations

import argparse

import torch
from common import (
    add_device_arguments,
    build_pair,
    config_dict,
    count_params,
    device_settings,
    equal_work,
    llava_stage,
    loss_tolerance,
    median,
    on_device,
    parse_configs,
    place,
    print_table,
    proportions,
    timed,
    training_batch,
    write_results,
)

TARGET = 0.9
MODELS = ("fusevlm", "fusevlm_equal_work", "llava")


def make_step(model: torch.nn.Module, batch: dict[str, torch.Tensor], lr: float = 1e-4):
    # fused AdamW: the HF Trainer's default optimizer ("adamw_torch_fused"), for every model
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, fused=True)
    losses: list[float] = []

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        losses.append(loss.item())

    return step, losses


def build_three(cfg, device, dtype, attn) -> dict[str, torch.nn.Module]:
    fuse, llava = build_pair(cfg)
    twin, _ = build_pair(cfg)  # the same seed: the same weights
    models = {"fusevlm": fuse, "fusevlm_equal_work": equal_work(twin), "llava": llava}
    for model in models.values():
        place(model, device, dtype, attn)
        llava_stage(model)
        model.train()
    return models


def run_config(cfg, steps: int, warmup: int, device, dtype, attn) -> dict:
    models = build_three(cfg, device, dtype, attn)
    batch = on_device(training_batch(cfg), device, dtype)
    trained = int((batch["labels"][:, 1:] != -100).sum())
    runs = {name: make_step(model, batch) for name, model in models.items()}
    times = {name: [] for name in MODELS}
    tolerance = loss_tolerance(dtype)
    for i in range(warmup + steps):
        order = list(MODELS[i % 3 :] + MODELS[: i % 3])  # each model goes first, second and third in turn
        for name in order:
            seconds = timed(runs[name][0], device)
            if i >= warmup:
                times[name].append(seconds)
        if i == 0:
            first = {name: runs[name][1][0] for name in MODELS}
            spread = max(first.values()) - min(first.values())
            assert spread <= tolerance, f"{cfg.name}: step-0 losses differ by {spread}: {first}"
    losses = {name: runs[name][1] for name in MODELS}
    medians = {name: median(times[name]) for name in MODELS}
    return {
        "config": config_dict(cfg),
        **proportions(cfg),
        "params": count_params(models["fusevlm"]),
        "trainable_params": sum(p.numel() for p in models["fusevlm"].parameters() if p.requires_grad),
        "tokens_per_step": int(batch["attention_mask"].sum()),
        "trained_tokens_per_step": trained,
        "fusevlm_fast_loss": models["fusevlm"].trains_at_labelled_positions(),
        "step0_loss": {name: losses[name][0] for name in MODELS},
        "max_loss_abs_diff_over_steps": max(
            abs(a - b) for name in MODELS[:2] for a, b in zip(losses[name], losses["llava"], strict=True)),
        "steps_timed": steps,
        "median_step_s": medians,
        "all_step_s": times,
        "ratio_fusevlm_over_llava": medians["fusevlm"] / medians["llava"],
        "ratio_equal_work_over_llava": medians["fusevlm_equal_work"] / medians["llava"],
        "target_ratio": TARGET,
    }


def profile(cfg, device, dtype, attn, row_limit: int = 25) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    batch = on_device(training_batch(cfg), device, dtype)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    for name, model in build_three(cfg, device, dtype, attn).items():
        step, _ = make_step(model, batch)
        step()  # warm up
        with torch_profile(activities=activities, record_shapes=False) as prof:
            step()
        print(f"\n=== {name} @ {cfg.name}: top ops by self time ===")
        key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        print(prof.key_averages().table(sort_by=key, row_limit=row_limit))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default="tiny,small,7b-shape")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per model (>= 20 for the record)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--quick", action="store_true", help="6 timed steps after 1 warm-up: a smoke run")
    parser.add_argument("--profile", action="store_true", help="print torch.profiler tables instead of timing")
    parser.add_argument("--json", default=None, help="write the results here (default: benchmarks/results/)")
    add_device_arguments(parser)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.steps, args.warmup = 6, 1
    device, dtype, attn = device_settings(args)
    configs = parse_configs(args.configs)
    if args.profile:
        for cfg in configs:
            profile(cfg, device, dtype, attn)
        return

    results = [run_config(cfg, args.steps, args.warmup, device, dtype, attn) for cfg in configs]
    print_table(
        ["config", "params", "head/body FLOPs", "image share", "trained share", "fusevlm s", "equal-work s",
         "llava s", "ratio", "equal-work ratio", "target"],
        [
            [
                r["config"]["name"],
                f"{r['params'] / 1e6:.1f}M",
                f"{r['head_to_body_flops']:.3f}",
                f"{r['image_token_share']:.2f}",
                f"{r['trained_share']:.2f}",
                r["median_step_s"]["fusevlm"],
                r["median_step_s"]["fusevlm_equal_work"],
                r["median_step_s"]["llava"],
                f"{r['ratio_fusevlm_over_llava']:.3f}",
                f"{r['ratio_equal_work_over_llava']:.3f}",
                f"<= {TARGET}",
            ]
            for r in results
        ],
    )
    settings = {"dtype": str(dtype), "attn": attn or "default", "threads": torch.get_num_threads()}
    name = "train_step" if attn is None else f"train_step-{attn}"
    write_results(name, {**settings, "results": results}, args.quick, args.json, device.type)


if __name__ == "__main__":
    main()
