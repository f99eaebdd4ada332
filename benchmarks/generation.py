"""Batched greedy generation: fusevlm vs transformers' LlavaForConditionalGeneration.generate.

Same config and weights (mapped by ``fusevlm.export``), the same left-padded prompts (BOS, image tokens, a prompt
of varying length), greedy decoding with the KV cache, a fixed number of new tokens (EOS suppressed until then).
The generated tokens must be identical; then both are timed, interleaved (alternating which goes first), and the
median tokens/s and their ratio are printed.

    python benchmarks/generation.py [--configs tiny,small,7b-shape] [--new-tokens 32] [--repeats 7] [--quick]
    python benchmarks/generation.py --configs 0.5b --device cuda --dtype bf16 --attn sdpa   # see gpu.sh
"""

from __future__ import annotations

import argparse

import torch
from common import (
    add_device_arguments,
    build_pair,
    config_dict,
    device_settings,
    generation_prompts,
    median,
    on_device,
    parse_configs,
    place,
    print_table,
    timed,
    write_results,
)

TARGET = 1.0


def run_config(cfg, new_tokens: int, repeats: int, warmup: int, device, dtype, attn) -> dict:
    fuse, llava = build_pair(cfg)
    for model in (fuse, llava):
        place(model, device, dtype, attn).eval()
    prompts = on_device(generation_prompts(cfg), device, dtype)
    kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
    outputs: dict[str, torch.Tensor] = {}

    def generator(name, model):
        def run() -> None:
            with torch.inference_mode():
                outputs[name] = model.generate(**prompts, **kwargs)

        return run

    runs = [("fusevlm", generator("fusevlm", fuse)), ("llava", generator("llava", llava))]
    times = {"fusevlm": [], "llava": []}
    for i in range(warmup + repeats):
        for name, run in runs if i % 2 == 0 else runs[::-1]:
            seconds = timed(run, device)
            if i >= warmup:
                times[name].append(seconds)
        if i == 0:
            assert outputs["fusevlm"].shape == outputs["llava"].shape
            assert outputs["fusevlm"].shape[1] == prompts["input_ids"].shape[1] + new_tokens
            same = (outputs["fusevlm"] == outputs["llava"]).float().mean().item()
            # fp32: the same decode op for op, so the same tokens; bf16 may flip a near-tie, and a flipped token
            # changes what follows it in that row
            assert same == 1.0 or (dtype != torch.float32 and same >= 0.9), f"{cfg.name}: tokens {same:.1%} equal"
    tokens = cfg.batch * new_tokens
    fuse_tps, llava_tps = tokens / median(times["fusevlm"]), tokens / median(times["llava"])
    return {
        "config": config_dict(cfg),
        "batch": cfg.batch,
        "prompt_len": prompts["input_ids"].shape[1],
        "new_tokens": new_tokens,
        "identical_tokens": same,
        "repeats": repeats,
        "median_s": {"fusevlm": median(times["fusevlm"]), "llava": median(times["llava"])},
        "tokens_per_s": {"fusevlm": fuse_tps, "llava": llava_tps},
        "all_s": times,
        "ratio_fusevlm_over_llava_tokens_per_s": fuse_tps / llava_tps,
        "target_ratio": TARGET,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default="tiny,small,7b-shape")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=7, help="timed generate() calls per model")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--quick", action="store_true", help="3 timed calls of 16 new tokens: a smoke run")
    parser.add_argument("--json", default=None, help="write the results here (default: benchmarks/results/)")
    add_device_arguments(parser)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.repeats, args.new_tokens = 3, 16
    device, dtype, attn = device_settings(args)
    results = [run_config(cfg, args.new_tokens, args.repeats, args.warmup, device, dtype, attn)
               for cfg in parse_configs(args.configs)]
    print_table(
        ["config", "batch", "prompt", "new", "same tokens", "fusevlm tok/s", "llava tok/s", "ratio", "target"],
        [
            [
                r["config"]["name"],
                r["batch"],
                r["prompt_len"],
                r["new_tokens"],
                r["identical_tokens"],
                r["tokens_per_s"]["fusevlm"],
                r["tokens_per_s"]["llava"],
                f"{r['ratio_fusevlm_over_llava_tokens_per_s']:.3f}",
                f">= {TARGET}",
            ]
            for r in results
        ],
    )
    settings = {"dtype": str(dtype), "attn": attn or "default", "threads": torch.get_num_threads()}
    write_results("generation", {**settings, "results": results}, args.quick, args.json, device.type)


if __name__ == "__main__":
    main()
