"""The README's benchmark table, built from the JSON files the benchmarks wrote into ``benchmarks/results/``.

Every figure in the table comes from one of those files, and every file is listed under it with the machine it
ran on (CPU model, cores, GPU, torch, threads) and its date; a ``--quick`` run is marked as such. The block sits
between two marker comments in README.md and is replaced whole.

    python benchmarks/report.py                      # print the block
    python benchmarks/report.py --update README.md   # rewrite it in the README
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
BEGIN = "<!-- benchmark-results:begin (written by benchmarks/report.py; do not edit by hand) -->"
END = "<!-- benchmark-results:end -->"
MB = 1024 * 1024


def _name(result: dict) -> str:
    return result["config"]["name"] if isinstance(result.get("config"), dict) else str(result.get("config"))


def train_step(run: dict) -> list[tuple[str, str, str]]:
    rows = []
    for r in run["results"]:
        s = r["median_step_s"]
        rows.append((f"training step ({run.get('attn', 'default')} attention), fusevlm / Llava median step", _name(r),
                     f"{s['fusevlm']:.3g} / {s['llava']:.3g} s = **{r['ratio_fusevlm_over_llava']:.2f}x**; "
                     f"equal work (fast loss path off) {r['ratio_equal_work_over_llava']:.2f}x; head/body FLOPs "
                     f"{r['head_to_body_flops']:.3f}, trained share {r['trained_share']:.2f}, image share "
                     f"{r['image_token_share']:.2f}; max loss difference {r['max_loss_abs_diff_over_steps']:.1e}"))
    return rows


def generation(run: dict) -> list[tuple[str, str, str]]:
    return [("batched greedy generation, fusevlm / Llava tokens/s", _name(r),
             f"{r['tokens_per_s']['fusevlm']:.0f} / {r['tokens_per_s']['llava']:.0f} = "
             f"{r['ratio_fusevlm_over_llava_tokens_per_s']:.2f}x; same tokens {float(r['identical_tokens']):.0%}")
            for r in run["results"]]


def utilisation(run: dict) -> list[tuple[str, str, str]]:
    peak = run["peak"]
    sustained, burst = peak["sustained_flops"] / 1e9, peak["burst_flops"] / 1e9
    return [("MFU of a training step (executed FLOPs / matmul rate)", f"{_name(r)}, batch {r['config']['batch']}",
             f"**{r['fusevlm']['mfu']:.1%}** of the sustained {sustained:.0f} GFLOP/s ({r['fusevlm']['mfu_of_burst']:.1%}"
             f" of the best burst, {burst:.0f}); Llava {r['llava']['mfu']:.1%}; "
             f"{r['fusevlm']['flops_per_step'] / 1e9:.3g} / {r['llava']['flops_per_step'] / 1e9:.3g} GFLOP a step")
            for r in run["results"]]


def memory(run: dict) -> list[tuple[str, str, str]]:
    peaks: dict[str, dict[tuple[str, bool], float]] = {}
    for r in run["results"]:
        peaks.setdefault(_name(r), {})[(r["model"], r["gradient_checkpointing"])] = r["steady_peak_rss"] / MB
    rows = []
    for config, p in peaks.items():
        figure = "; ".join(f"{model} {p.get((model, False), float('nan')):.0f} / {p.get((model, True), float('nan')):.0f} MB"
                           for model in ("fusevlm", "llava") if (model, False) in p)
        rows.append(("peak RSS of a training step, checkpointing off / on", config, figure))
    return rows


def packing(run: dict) -> list[tuple[str, str, str]]:
    return [("packing vs padding, non-pad tokens/s on a skewed mixture", str(run.get("config", "tiny")),
             f"**{run['ratio']:.2f}x**; per-sample loss difference {run['losses']['max_per_sample_loss_diff']:.1e}; "
             f"padding was {run['padded']['pad_fraction']:.0%} of the padded batch")]


def data_pipeline(run: dict) -> list[tuple[str, str, str]]:
    during = {r["workers"]: r for r in run["while_training"]}
    alone = {r["workers"]: r for r in run["loaders"]}
    parts = [f"{w} workers: {r['of_precollated_rate']:.2f} of the pre-collated step rate, "
             f"{r['data_wait_share']:.0%} of the time waiting" for w, r in sorted(during.items())]
    if 2 in alone:
        parts.append(f"2 workers alone {alone[2]['samples_per_s'] / run['train']['samples_per_s']:.1f}x the step rate")
    return [(f"data pipeline while training, batch {run['batch']}", "tiny", "; ".join(parts))]


def data_scale(run: dict) -> list[tuple[str, str, str]]:
    rows = run["rows"]
    small, large = rows[0], rows[-1]
    figure = (f"{large['records']:,} records: first run {large['first']['first_step_s']:.0f} s "
              f"({large['build_records_per_s']:,.0f} records/s tokenized with {large['num_proc']} processes); "
              f"later runs **{large['second']['first_step_s']:.1f} s** ({small['records']:,} records: "
              f"{small['second']['first_step_s']:.1f} s = {large['second_vs_smallest']:.2f}x), "
              f"RSS {large['second']['peak_rss_mb']:.0f} MB (+{large['rss_growth_bytes_per_record']:.0f} B/record)")
    return [("data start-up, LLaVA caption records: to the first training step", "align, tiny", figure)]


RENDER = {"train_step": train_step, "generation": generation, "utilisation": utilisation, "memory": memory,
          "packing": packing, "data_pipeline": data_pipeline, "data_scale": data_scale}


def describe(run: dict) -> str:
    m = run["machine"]
    where = m.get("cuda") or f"{m.get('cpu_model', '?')}, {m.get('cpu_cores', '?')} cores"
    extra = [f"torch {m.get('torch', '?')}", f"{m.get('torch_threads', '?')} threads"]
    if run.get("dtype"):
        extra.append(run["dtype"].replace("torch.", ""))
    load = m.get("load_average")
    if load:
        extra.append(f"load {load[0]:.1f} at start")
    quick = " **quick run: preliminary**" if run.get("quick") else ""
    return f"{m.get('date', '?')[:10]}, {where}, {', '.join(extra)}{quick}"


def block(results: Path = RESULTS) -> str:
    files = sorted(results.glob("*.json"))
    lines = [BEGIN]
    if not files:
        lines += ["No results in `benchmarks/results/` yet: run the benchmarks (see above).", END]
        return "\n".join(lines)
    lines += ["| what (`python benchmarks/...`) | config | figure | run |", "| --- | --- | --- | --- |"]
    runs = []
    for number, path in enumerate(files, 1):
        run = json.loads(path.read_text())
        render = RENDER.get(run.get("benchmark", "").split("-")[0])
        if render is None:
            raise SystemExit(f"{path}: unknown benchmark {run.get('benchmark')!r}; known: {', '.join(RENDER)}")
        runs.append(f"[{number}] `{path.name}`: {describe(run)}")
        script = run["benchmark"].split("-")[0]
        for what, config, figure in render(run):
            lines.append(f"| {what} (`{script}.py`) | {config} | {figure} | [{number}] |")
    lines += ["", *[f"{run}  " for run in runs[:-1]], runs[-1], END]
    return "\n".join(lines)


def update(readme: Path, text: str) -> bool:
    """Replace the marked block in ``readme``; True when its content changed. Refuses a file without markers."""
    old = readme.read_text()
    start, end = old.find(BEGIN), old.find(END)
    if start < 0 or end < start:
        raise SystemExit(f"{readme}: no benchmark-results block (the lines {BEGIN!r} ... {END!r})")
    new = old[:start] + text + old[end + len(END):]
    readme.write_text(new)
    return new != old


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=RESULTS, help="the folder of result files")
    parser.add_argument("--update", type=Path, metavar="README", help="rewrite the block in this file")
    args = parser.parse_args(argv)
    text = block(args.results)
    print(text)
    if args.update:
        update(args.update, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
