"""Data pipeline throughput against the training step it feeds (issue 8: >= 5x with 2 workers at the tiny config).

The pipeline is the real one: LLaVA-format records of the synthetic 64 px dataset (``fusevlm.data.synthetic``),
``ConversationDataset`` (every record tokenized once into the cache up front; then per sample: read + decode the PNG, pad to square,
the image processor) and the collator, through ``torch.utils.data.DataLoader`` with 0, 1 and 2 workers. Two
measurements:

- *while training* (the one that matters): the tiny config's training step (forward, backward, AdamW) fed by the
  DataLoader, workers and step sharing the same cores, against the same steps on batches collated beforehand.
  Reported: the fed step rate as a fraction of the pre-collated one (1.0: the pipeline costs nothing) and the
  share of the time the loop waited for a batch.
- *workers alone*: samples/s out of the DataLoader with nothing else running, as a multiple of the step rate
  (an upper bound: on a 2-core machine the workers and the step take turns on the same cores).

Workers start before the clock (steady state). Tokenization runs once before training and is reported apart.

    python benchmarks/data_pipeline.py [--quick] [--json PATH] [--batch N] [--packing]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from common import CONFIGS, write_results
from torch.utils.data import DataLoader

from fusevlm import build_vlm
from fusevlm.data import synthetic
from fusevlm.data.dataset import ConversationDataset, Source, VLMCollator, load_mixture
from fusevlm.data.packing import PackingCollator, without_cache
from fusevlm.data.tokenizer import train_tokenizer

DATA_IMAGE_SIZE = 64  # the synthetic pictures; the tiny tower reads 32 px, so every image is resized


def tiny_parts(root: Path, texts: list[str]) -> tuple[Any, Any]:
    """The train-step benchmark's ``tiny`` config (benchmarks/common.py) as folders, with a real tokenizer."""
    from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

    cfg = CONFIGS["tiny"]
    tokenizer = train_tokenizer(texts, root / "llm", vocab_size=cfg.vocab)
    torch.manual_seed(0)
    CLIPVisionModel(CLIPVisionConfig(
        hidden_size=cfg.vision_hidden, intermediate_size=4 * cfg.vision_hidden, num_hidden_layers=cfg.vision_layers,
        num_attention_heads=cfg.vision_heads, image_size=cfg.image_size, patch_size=cfg.patch,
    )).save_pretrained(root / "vision")
    LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=cfg.hidden, intermediate_size=cfg.intermediate,
        num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads, num_key_value_heads=cfg.kv_heads,
        max_position_embeddings=512, tie_word_embeddings=False, bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )).save_pretrained(root / "llm")
    return build_vlm(str(root / "vision"), "mlp2x_gelu", str(root / "llm"))


def loader_rate(dataset: ConversationDataset, collator: Any, batch: int, workers: int, batches: int) -> dict:
    """Samples/s through a DataLoader in steady state (workers started, their prefetched batches drained)."""
    generator = torch.Generator().manual_seed(0)
    loader = DataLoader(dataset, batch_size=batch, shuffle=True, generator=generator, num_workers=workers,
                        collate_fn=collator, drop_last=True, persistent_workers=False,
                        prefetch_factor=4 if workers else None)
    iterator = iter(loader)
    started = time.perf_counter()
    next(iterator)  # workers spawned and primed
    warm = time.perf_counter()
    for _ in range(4 * workers):  # drain what the workers buffered meanwhile: time production, not the buffer
        next(iterator)
    timed_from = time.perf_counter()
    count = 0
    for _ in range(batches):
        next(iterator)
        count += batch
    elapsed = time.perf_counter() - timed_from
    del iterator
    rate = count / elapsed
    return {"workers": workers, "samples_per_s": rate, "per_worker": rate / max(workers, 1),
            "startup_s": warm - started}


def model_batch(collated: dict) -> dict:
    keys = ("input_ids", "labels", "attention_mask", "position_ids", "pixel_values")
    return {k: collated[k] for k in keys if k in collated}


def train_step(model: Any, optimizer: Any, inputs: dict) -> None:
    model(**inputs).loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def step_rate(model: Any, dataset: ConversationDataset, collator: Any, batch: int, steps: int,
              packing: bool) -> dict:
    """Training steps/s of the model on pre-collated batches (the pipeline's cost kept out)."""
    generator = torch.Generator().manual_seed(1)
    order = torch.randperm(len(dataset), generator=generator).tolist()
    batches = [model_batch(collator([dataset[i] for i in order[s * batch : (s + 1) * batch]]))
               for s in range(steps + 2)]
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    times = []
    with without_cache(model) if packing else nullcontext():
        for i, inputs in enumerate(batches):
            started = time.perf_counter()
            train_step(model, optimizer, inputs)
            if i >= 2:  # two warm-up steps
                times.append(time.perf_counter() - started)
    median = statistics.median(times)
    return {"steps_per_s": 1 / median, "samples_per_s": batch / median, "median_step_s": median,
            "mean_steps_per_s": len(times) / sum(times)}


def fed_rate(model: Any, dataset: ConversationDataset, collator: Any, batch: int, workers: int, steps: int,
             packing: bool, alone: dict) -> dict:
    """The training loop fed by the DataLoader, on the same cores: steps/s, and the share spent waiting for data."""
    generator = torch.Generator().manual_seed(2)
    loader = DataLoader(dataset, batch_size=batch, shuffle=True, generator=generator, num_workers=workers,
                        collate_fn=collator, drop_last=True, prefetch_factor=4 if workers else None)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    iterator = iter(loader)
    waited = computed = 0.0
    with without_cache(model) if packing else nullcontext():
        for i in range(steps + 2):
            started = time.perf_counter()
            inputs = model_batch(next(iterator))
            got = time.perf_counter()
            train_step(model, optimizer, inputs)
            done = time.perf_counter()
            if i >= 2:  # the workers' start and two warm-up steps
                waited += got - started
                computed += done - got
    del iterator
    rate = steps / (waited + computed)
    return {"workers": workers, "steps_per_s": rate, "samples_per_s": rate * batch,
            "of_precollated_rate": rate / alone["mean_steps_per_s"],  # both: steps over their total time
            "data_wait_share": waited / (waited + computed)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples and steps (a noisy, shared machine)")
    parser.add_argument("--json", type=Path, help="write the results here (default: benchmarks/results/)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's; 1 with --quick, as a busy "
                        "machine's oversubscribed OpenMP threads can slow a step 10x)")
    parser.add_argument("--batch", type=int, default=CONFIGS["tiny"].batch, help="samples per step (the tiny config's)")
    parser.add_argument("--packing", action="store_true", help="the packing collator instead of padding")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    if args.threads or args.quick:
        torch.set_num_threads(args.threads or 1)
    batches = max(8, (768 if args.quick else 3072) // args.batch)  # timed per loader, after the warm-up
    samples = args.batch * (batches + 1 + 4 * max(args.workers))  # one pass: no sample is served twice
    steps = 30 if args.quick else 100

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        total = max(samples, args.batch * (steps + 3))  # the fed runs see each sample at most once too
        synthetic.generate(root / "data", num_train=total, num_eval=8, num_align=8, image_size=DATA_IMAGE_SIZE)
        model, processor = tiny_parts(root / "parts", list(synthetic.training_texts(root / "data")))
        source = Source(str(root / "data" / "train.json"), image_root=str(root / "data" / "images"))
        started = time.perf_counter()
        dataset = load_mixture([source], processor, model_max_length=128, cache_dir=root / "cache")
        tokenize_rate = len(dataset) / (time.perf_counter() - started)
        pad_id = processor.tokenizer.pad_token_id
        collator = PackingCollator(pad_id, 128) if args.packing else VLMCollator(pad_token_id=pad_id)

        train = step_rate(model, dataset, collator, args.batch, steps, args.packing)
        fed = [fed_rate(model, dataset, collator, args.batch, w, steps, args.packing, train) for w in args.workers]
        loaders = [loader_rate(dataset, collator, args.batch, w, batches) for w in args.workers]

    need = train["samples_per_s"]
    print(f"\nmachine: {platform.machine()}, {torch.get_num_threads()} torch threads; batch {args.batch}, "
          f"{'packed' if args.packing else 'padded'}; tiny config ({processor.image_seq_length} image tokens), "
          f"{DATA_IMAGE_SIZE} px PNGs resized to {CONFIGS['tiny'].image_size}")
    print(f"training step on pre-collated batches: {train['steps_per_s']:.1f} steps/s = {need:.0f} samples/s")
    print(f"tokenizing (once, up front): {tokenize_rate:.0f} samples/s")
    print("\nwhile training (the DataLoader feeds the step, on the same cores):")
    print(f"{'workers':>8}{'steps/s':>10}{'of pre-collated':>17}{'waiting for data':>18}")
    for row in fed:
        print(f"{row['workers']:>8}{row['steps_per_s']:>10.1f}{row['of_precollated_rate']:>17.2f}"
              f"{row['data_wait_share']:>18.1%}")
    print("\nworkers alone (nothing else running):")
    print(f"{'workers':>8}{'samples/s':>12}{'per worker':>12}{'x step rate':>13}{'startup s':>11}")
    for row in loaders:
        row["x_step_rate"] = row["samples_per_s"] / need
        print(f"{row['workers']:>8}{row['samples_per_s']:>12.0f}{row['per_worker']:>12.0f}"
              f"{row['x_step_rate']:>13.2f}{row['startup_s']:>11.2f}")
    two = next((r for r in loaders if r["workers"] == 2), None)
    if two is not None:
        print(f"2 workers alone feed {two['x_step_rate']:.2f}x the step rate (target >= 5x): "
              f"{'met' if two['x_step_rate'] >= 5 else 'NOT met'}")
    payload = {"batch": args.batch, "packing": args.packing, "threads": torch.get_num_threads(), "train": train,
               "while_training": fed, "tokenize_samples_per_s": tokenize_rate, "loaders": loaders}
    write_results("data_pipeline", payload, args.quick, args.json)


if __name__ == "__main__":
    main()
