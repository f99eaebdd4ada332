"""Peak resident memory (RSS) of a training step, fusevlm and its transformers Llava twin, at each config, with
gradient checkpointing off and on.

Each (config, model, checkpointing) runs in a fresh subprocess, so peaks never mix: it builds only its model,
records the RSS once built, then trains a few steps (LLaVA-1.5 instruct stage, fused AdamW, the batch of
``train_step.py``). Linux's peak counter (VmHWM) is reset before each step through ``/proc/self/clear_refs``, so
each step's own peak is read; where that is not allowed, the process's lifetime peak (``ru_maxrss``) is used. The
first step also allocates the optimizer state; the steady-state peak is the largest of the later steps.

    python benchmarks/memory.py [--configs tiny,small,7b-shape] [--steps 3] [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

import torch
from common import CONFIGS, config_dict, print_table, write_results

MB = 1024 * 1024


def _status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def current_rss() -> int:
    kb = _status_kb("VmRSS")
    return kb * 1024 if kb is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def peak_rss() -> int:
    kb = _status_kb("VmHWM")
    return kb * 1024 if kb is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def child(config: str, model_name: str, checkpointing: bool, steps: int) -> dict:
    """Runs in the subprocess: build one model, train ``steps`` steps, report the RSS figures."""
    from common import fusevlm_config, llava_stage, training_batch
    from transformers import LlavaForConditionalGeneration

    from fusevlm.export import llava_config_from
    from fusevlm.models.vlm import FuseVLMForConditionalGeneration

    cfg = CONFIGS[config]
    start_rss = current_rss()
    torch.manual_seed(0)
    if model_name == "fusevlm":
        model = FuseVLMForConditionalGeneration(fusevlm_config(cfg))
    else:
        with torch.device("meta"):  # only for its config
            shape = FuseVLMForConditionalGeneration(fusevlm_config(cfg))
        model = LlavaForConditionalGeneration._from_config(llava_config_from(shape), dtype=torch.float32)
    model.float()
    llava_stage(model)
    model.train()
    if checkpointing:
        model.activation_checkpointing_enable({"use_reentrant": False})
    batch = training_batch(cfg)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, fused=True)
    built_rss = current_rss()
    can_reset = _reset_peak()
    step_peaks, fwd_bwd_peaks, optimizer_peaks, losses = [], [], [], []
    for _ in range(steps):
        if can_reset:
            _reset_peak()
        optimizer.zero_grad(set_to_none=True)
        loss = model(**batch).loss
        loss.backward()
        fwd_bwd_peaks.append(peak_rss())
        if can_reset:
            _reset_peak()
        optimizer.step()
        optimizer_peaks.append(peak_rss())
        losses.append(loss.item())
        step_peaks.append(max(fwd_bwd_peaks[-1], optimizer_peaks[-1]))
    return {
        "fwd_bwd_peak_rss": fwd_bwd_peaks,
        "optimizer_peak_rss": optimizer_peaks,
        "interpreter_rss": start_rss,
        "built_rss": built_rss,
        "step_peak_rss": step_peaks,
        "first_step_peak_rss": step_peaks[0],
        "steady_peak_rss": max(step_peaks[1:]) if len(step_peaks) > 1 else step_peaks[0],
        "per_step_peak_method": "VmHWM reset per step" if can_reset else "ru_maxrss (lifetime)",
        "losses": losses,
        "checkpointing_active": bool(getattr(model, "is_activation_checkpointing", False)),
        "params": sum(p.numel() for p in model.parameters()),
    }


def run_child(config: str, model_name: str, checkpointing: bool, steps: int, threads: int | None) -> dict:
    command = [sys.executable, __file__, "--child", config, model_name, str(int(checkpointing)), str(steps)]
    if threads:
        command += ["--threads", str(threads)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{config}/{model_name}/checkpointing={checkpointing} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default="tiny,small,7b-shape")
    parser.add_argument("--models", default="fusevlm,llava")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--quick", action="store_true", help="2 steps per run: a smoke run")
    parser.add_argument("--json", default=None, help="write the results here (default: benchmarks/results/)")
    parser.add_argument("--child", nargs=4, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        config, model_name, checkpointing, steps = args.child
        print(json.dumps(child(config, model_name, checkpointing == "1", int(steps))))
        return
    if args.quick:
        args.steps = 2

    results = []
    for config in args.configs.split(","):
        for model_name in args.models.split(","):
            for checkpointing in (False, True):
                measured = run_child(config, model_name, checkpointing, args.steps, args.threads)
                results.append({"config": config_dict(CONFIGS[config]), "model": model_name,
                                "gradient_checkpointing": checkpointing, **measured})
    for config in args.configs.split(","):  # checkpointing changes memory, never the loss
        runs = [r for r in results if r["config"]["name"] == config]
        first = [r["losses"][0] for r in runs if r["model"] == "fusevlm"]
        assert max(first) - min(first) <= 1e-5, f"{config}: gradient checkpointing changed the loss: {first}"

    print_table(
        ["config", "model", "grad ckpt", "built MB", "step-1 peak MB", "steady peak MB", "- built MB",
         "fwd+bwd peak MB", "optimizer peak MB"],
        [
            [
                r["config"]["name"],
                r["model"],
                "on" if r["gradient_checkpointing"] else "off",
                f"{r['built_rss'] / MB:.0f}",
                f"{r['first_step_peak_rss'] / MB:.0f}",
                f"{r['steady_peak_rss'] / MB:.0f}",
                f"{(r['steady_peak_rss'] - r['built_rss']) / MB:.0f}",
                f"{max(r['fwd_bwd_peak_rss'][1:] or r['fwd_bwd_peak_rss']) / MB:.0f}",
                f"{max(r['optimizer_peak_rss'][1:] or r['optimizer_peak_rss']) / MB:.0f}",
            ]
            for r in results
        ],
    )
    write_results("memory", {"steps": args.steps, "results": results}, args.quick, args.json)


if __name__ == "__main__":
    main()
