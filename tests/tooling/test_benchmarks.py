"""benchmarks/: every script runs (smallest settings) and writes its JSON with the machine it ran on; the README's
table is built from those files alone; gpu.sh on a machine without CUDA says so and exits 0. No figure is checked
here: the scripts print and store them (benchmarks/results/)."""

import datetime
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
SMOKE = {
    "train_step": ["--steps", "2", "--warmup", "1", "--configs", "tiny"],
    "generation": ["--quick", "--repeats", "1", "--configs", "tiny"],
    "utilisation": ["--quick", "--configs", "tiny", "--sustain", "0.5"],
    "memory": ["--quick", "--configs", "tiny", "--models", "fusevlm"],
    "packing": ["--quick", "--steps", "1", "--batch", "8"],
    "data_pipeline": ["--quick", "--workers", "0", "1"],
}


def script_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


@pytest.fixture(scope="module")
def report():
    spec = importlib.util.spec_from_file_location("benchmark_report", BENCH / "report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    folder = tmp_path_factory.mktemp("results")
    for name, args in SMOKE.items():
        path = folder / f"{name}.cpu.quick.json"
        run = subprocess.run([sys.executable, str(BENCH / f"{name}.py"), *args, "--json", str(path)],
                             capture_output=True, text=True, timeout=600, env=script_env(), cwd=BENCH)
        assert run.returncode == 0, f"{name}: {run.stdout[-2000:]}{run.stderr[-3000:]}"
    return folder


@pytest.mark.parametrize("name", sorted(SMOKE))
def test_each_benchmark_stores_its_figures_with_the_machine(results, name):
    record = json.loads((results / f"{name}.cpu.quick.json").read_text())
    assert record["benchmark"] == name and record["device"] == "cpu"
    assert record["quick"] is ("--quick" in SMOKE[name])
    machine = record["machine"]
    assert machine["torch"] == torch.__version__ and machine["cpu_cores"] >= 1 and machine["cpu_model"]
    assert datetime.datetime.fromisoformat(machine["date"]).date() == datetime.datetime.now(datetime.timezone.utc).date()


def test_the_readme_table_comes_from_the_result_files(results, report, tmp_path):
    text = report.block(results)
    runs = [line for line in text.splitlines() if line.startswith("[")]
    assert len(runs) == len(SMOKE)
    for number, name in enumerate(sorted(f"{n}.cpu.quick.json" for n in SMOKE), 1):
        assert f"[{number}] `{name}`: " in runs[number - 1]
    assert all(" cores, torch " + torch.__version__ in line for line in runs)
    assert sum("quick run: preliminary" in line for line in runs) == len(SMOKE) - 1  # train_step ran without --quick
    rows = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line][1:]
    for name in SMOKE:
        assert any(f"(`{name}.py`)" in row for row in rows), name
    # the figures are the files' own: the training step's ratio, as stored
    stored = json.loads((results / "train_step.cpu.quick.json").read_text())["results"][0]
    assert f"**{stored['ratio_fusevlm_over_llava']:.2f}x**" in next(r for r in rows if "train_step.py" in r)

    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{report.BEGIN}\nold\n{report.END}\nrest\n")
    assert report.update(readme, text)
    assert readme.read_text() == f"intro\n{text}\nrest\n"
    assert "No results" in report.block(tmp_path / "empty")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU: gpu.sh would run in earnest")
def test_gpu_script_without_a_gpu_says_so_and_exits_0():
    run = subprocess.run(["bash", str(BENCH / "gpu.sh")], capture_output=True, text=True, timeout=120,
                         env={**script_env(), "PYTHON": sys.executable})
    assert run.returncode == 0, run.stderr
    assert "needs a CUDA GPU" in run.stdout and "nothing was run" in run.stdout
