"""Run the full `fusevlm demo` and print it against its targets (issue: <= 5 min, colour/shape >= 90%,
all tasks >= 80%, >= 2x the blind baseline). A measurement script, not a test.

    python benchmarks/demo_targets.py [--out out/demo] [--fast]
"""

from __future__ import annotations

import argparse
import json
import platform

import torch

from fusevlm.demo import run_demo


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="out/demo")
    parser.add_argument("--fast", action="store_true")
    args = parser.parse_args()
    report = run_demo(args.out, fast=args.fast)
    overall, tasks = report["overall"], report["tasks"]
    limit = 90 if args.fast else 300
    rows = [
        ("wall time (s)", report["seconds"]["total"], f"<= {limit}", report["seconds"]["total"] <= limit),
        ("overall accuracy", overall["accuracy"], ">= 0.80", overall["accuracy"] >= 0.8),
        ("colour accuracy", tasks["color"]["accuracy"], ">= 0.90", tasks["color"]["accuracy"] >= 0.9),
        ("shape accuracy", tasks["shape"]["accuracy"], ">= 0.90", tasks["shape"]["accuracy"] >= 0.9),
        ("accuracy / blind", overall["accuracy"] / max(overall["blind_accuracy"], 1e-9), ">= 2",
         overall["accuracy"] >= 2 * overall["blind_accuracy"]),
    ]
    print(f"\nmachine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads")
    print(f"{'measure':<20}{'value':>10}  {'target':<10}met")
    for name, value, target, met in rows:
        print(f"{name:<20}{value:>10.3f}  {target:<10}{'yes' if met else 'NO'}")
    print(json.dumps({name: {"value": value, "met": met} for name, value, _, met in rows}))


if __name__ == "__main__":
    main()
