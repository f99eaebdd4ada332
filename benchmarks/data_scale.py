"""Data at scale: time to the first training step and peak memory against the number of records (issue 17).

For each N, N synthetic LLaVA-558k-style caption records (a JSON list, as LLaVA ships it; ids, a prompt, a caption
of 6-20 words) over 1000 small PNGs are written, and ``fusevlm train`` runs an align recipe with ``max_steps: 1``
twice, each time in a fresh process: the first run builds the tokenized cache (``preprocessing_num_workers``
processes), the second opens it. Each run reports the wall time from starting the process to the first training
step (imports, model load, data, trainer set-up, as a user waits for it) and its peak RSS (the training process;
the cache-building workers' own peak apart). Targets (2-core machine): the second run at 1M records within 1.5x
of the one at 1k; memory growth at most 200 bytes per record; the first run tokenizing >= 20k records/s with 2
processes.

    python benchmarks/data_scale.py [--sizes 1000,100000,1000000] [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import print_table, write_results

HERE = Path(__file__).resolve().parent
WORDS = ("a the of on in with at near red blue green white black small large old new wooden metal dog cat man woman "
         "child car bus train street road tree sky water beach field house building table chair window door plate "
         "food pizza cake bird horse sign clock phone computer desk bed room kitchen park bench snow grass").split()
PROMPTS = ("Describe the image concisely.", "Provide a brief description of the given image.",
           "Write a terse but informative summary of the picture.", "Summarize the visual content of the image.",
           "Give a short and clear explanation of the subsequent image.", "Share a concise interpretation of the image.")
SEED_RECORDS = 5_650_000  # the seed's mixture (CodeFuse-VLM README)


def write_records(path: Path, n: int, images: int) -> None:
    rng = random.Random(0)
    with path.open("w") as handle:
        handle.write("[")
        for i in range(n):
            caption = " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 20)))
            record = {"id": f"{i:09d}", "image": f"{i % images // 100:02d}/{i % images:05d}.png",
                      "conversations": [{"from": "human", "value": f"{rng.choice(PROMPTS)}\n<image>"},
                                        {"from": "gpt", "value": caption}]}
            handle.write(("," if i else "") + json.dumps(record))
        handle.write("]")


def write_images(root: Path, images: int) -> None:
    from PIL import Image

    for i in range(images):
        folder = root / f"{i // 100:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (48, 40), ((i * 7) % 256, (i * 13) % 256, (i * 29) % 256)).save(folder / f"{i:05d}.png")


def make_parts(root: Path) -> tuple[str, str]:
    """A small CLIP tower and Llama LM as folders, with a BPE tokenizer trained on the caption words."""
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

    from fusevlm.data.tokenizer import train_tokenizer

    rng = random.Random(1)
    texts = [" ".join(rng.choice(WORDS) for _ in range(12)) for _ in range(2000)] + list(PROMPTS)
    tokenizer = train_tokenizer(texts, root / "llm", vocab_size=1000)
    torch.manual_seed(0)
    CLIPVisionModel(CLIPVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                     num_attention_heads=2, image_size=32, patch_size=8)).save_pretrained(root / "vision")
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                                 tie_word_embeddings=False, bos_token_id=None, eos_token_id=tokenizer.eos_token_id,
                                 pad_token_id=tokenizer.pad_token_id)).save_pretrained(root / "llm")
    return str(root / "vision"), str(root / "llm")


def recipe(data: Path, images: Path, parts: tuple[str, str], out: Path, cache: Path, num_proc: int) -> dict:
    return {
        "model": {"vision": parts[0], "projector": "mlp2x_gelu", "llm": parts[1]},
        "data": [{"path": str(data), "image_root": str(images)}],
        "output_dir": str(out), "stage": "align", "template": "plain", "model_max_length": 128,
        "per_device_train_batch_size": 4, "max_steps": 1, "save_strategy": "no", "report_to": "none",
        "disable_tqdm": True, "dataloader_num_workers": 0, "seed": 0,
        "data_cache_dir": str(cache), "preprocessing_num_workers": num_proc,
    }


def child(recipe_path: str, started: str, result_path: str) -> None:
    """One training run in this process: writes the time to the first step and the peak RSS as JSON."""
    from transformers import TrainerCallback

    from fusevlm.train.recipe import load_recipe
    from fusevlm.train.run import train

    class FirstStep(TrainerCallback):
        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.global_step == 0:
                Path(result_path).write_text(json.dumps({
                    "first_step_s": time.time() - float(started),
                    "cpu_s": time.process_time(),  # this process's CPU time: steadier than wall time on a busy machine
                    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                    "workers_peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
                    "workers_cpu_s": sum(getattr(resource.getrusage(resource.RUSAGE_CHILDREN), f)
                                         for f in ("ru_utime", "ru_stime")),
                }))

    train(load_recipe(recipe_path), callbacks=[FirstStep()])


def run_once(recipe_path: Path, result: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent), str(HERE)])}
    started = time.time()
    done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", str(recipe_path),
                           str(started), str(result)], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"training run failed:\n{done.stderr[-3000:]}")
    values = json.loads(result.read_text())
    values["wall_s"] = time.time() - started
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1000,100000,1000000", help="record counts, comma-separated")
    parser.add_argument("--quick", action="store_true", help="1k and 20k records only")
    parser.add_argument("--images", type=int, default=1000, help="distinct image files the records point at")
    parser.add_argument("--num-proc", type=int, default=2, help="processes that build the cache")
    parser.add_argument("--json", help="write the results here (default: benchmarks/results/)")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    sizes = [1000, 20000] if args.quick else [int(s) for s in args.sizes.split(",")]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_images(root / "images", args.images)
        parts = make_parts(root / "parts")
        for n in sizes:
            data = root / f"records_{n}.json"
            started = time.perf_counter()
            write_records(data, n, args.images)
            written = time.perf_counter() - started
            cache = root / f"cache_{n}"
            path = root / f"recipe_{n}.json"
            path.write_text(json.dumps(recipe(data, root / "images", parts, root / f"out_{n}", cache, args.num_proc)))
            first = run_once(path, root / "first.json")
            (meta_file,) = cache.glob("encoded/*/meta.json")
            meta = json.loads(meta_file.read_text())
            second = run_once(path, root / "second.json")
            # CPU spent building (the workers', and the main process's beyond what a cache hit costs): the rate
            # two idle cores would give, whatever else the machine was running meanwhile.
            build_cpu = first["workers_cpu_s"] + max(first["cpu_s"] - second["cpu_s"], 0.0)
            rows.append({"records": n, "file_mb": data.stat().st_size / 2**20, "write_s": written,
                         "first": first, "second": second, "build_s": meta["build_seconds"],
                         "build_records_per_s": n / meta["build_seconds"], "num_proc": meta["num_proc"],
                         "build_cpu_us_per_record": build_cpu / n * 1e6 if first["workers_cpu_s"] else None,
                         "idle_records_per_s": args.num_proc / (build_cpu / n) if first["workers_cpu_s"] else None})
            data.unlink()
            print(f"{n} records: first {first['first_step_s']:.1f} s, second {second['first_step_s']:.1f} s",
                  flush=True)
    base = rows[0]
    for row in rows:  # (a file of one chunk is built in the training process itself: no workers to time)
        span = row["records"] - base["records"]
        row["rss_growth_bytes_per_record"] = (
            (row["second"]["peak_rss_mb"] - base["second"]["peak_rss_mb"]) * 2**20 / span if span else None)
        row["second_vs_smallest"] = row["second"]["first_step_s"] / base["second"]["first_step_s"]
    print_table(
        ["records", "file MB", "1st run: to step s", "tokenize rec/s", "CPU us/rec", "RSS MB (workers)",
         "2nd run: to step s", "x smallest", "RSS MB", "RSS B/record"],
        [[r["records"], round(r["file_mb"], 1), r["first"]["first_step_s"], round(r["build_records_per_s"]),
          "" if r["build_cpu_us_per_record"] is None else round(r["build_cpu_us_per_record"], 1),
          f"{r['first']['peak_rss_mb']:.0f} ({r['first']['workers_peak_rss_mb']:.0f})", r["second"]["first_step_s"],
          r["second_vs_smallest"], round(r["second"]["peak_rss_mb"]),
          "" if r["rss_growth_bytes_per_record"] is None else round(r["rss_growth_bytes_per_record"], 1)]
         for r in rows],
    )
    last = rows[-1]
    if len(rows) > 1:
        per_record = max(last["rss_growth_bytes_per_record"], 0.0)
        build_s = SEED_RECORDS / last["build_records_per_s"]
        print(f"\nextrapolated to the seed's {SEED_RECORDS:,} records: first run tokenizes for about {build_s / 60:.1f} "
              f"min once; later runs and resumes start in about {last['second']['first_step_s']:.0f} s with "
              f"{base['second']['peak_rss_mb'] + per_record * SEED_RECORDS / 2**20:.0f} MB per rank")
    print(f"targets: 2nd run x smallest <= 1.5 ({last['second_vs_smallest']:.2f}); RSS growth <= 200 B/record "
          f"({last['rss_growth_bytes_per_record']}); tokenizing >= 20000 records/s ({last['build_records_per_s']:.0f}"
          f" measured; {args.num_proc} idle cores at the CPU time it took: {last['idle_records_per_s'] or 0:.0f})")
    write_results("data_scale", {"sizes": sizes, "num_proc": args.num_proc, "images": args.images,
                                 "seed_records": SEED_RECORDS, "rows": rows}, args.quick, args.json)


if __name__ == "__main__":
    main()
