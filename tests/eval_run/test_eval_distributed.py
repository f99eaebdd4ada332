"""Two torchrun processes (gloo on CPU) give the answers file one process gives."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from eval_run_helpers import Bench

from fusevlm.eval.runner import evaluate

REPO = Path(__file__).resolve().parents[2]


def test_two_processes_write_the_same_answers_as_one(tiny_model: Path, mmbench: Bench, tmp_path: Path):
    # 7 questions, batches of 2: the ranks get uneven shards (4 and 3) and different batch neighbours
    single = tmp_path / "single"
    evaluate(tiny_model, *mmbench.args, out=single, batch_size=2, max_new_tokens=3, progress=False)

    double = tmp_path / "double"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "fusevlm.eval.cli", "--model", str(tiny_model), "--benchmark", "mmbench",
         "--data", str(mmbench.data), "--out", str(double), "--batch-size", "2", "--max-new-tokens", "3",
         "--no-progress"],
        capture_output=True, text=True, timeout=300, env=env, cwd=REPO,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    assert run.stdout.count("| mmbench |") == 1  # only rank 0 reports

    # each rank answered its strided shard into its own partial file
    shards = [[json.loads(line)["question_id"] for line in (double / f"mmbench.partial.rank{r}.jsonl")
               .read_text().splitlines()[1:]] for r in (0, 1)]
    assert shards == [[1, 2000001, 2, 2000002], [1000001, 3000001, 1000002]]

    sheet = "mmbench_submission.tsv"
    assert (double / sheet).read_bytes() == (single / sheet).read_bytes()
    one, two = (json.loads((d / "scores.json").read_text()) for d in (single, double))
    assert {k: v for k, v in one.items() if k != "answers_file"} == {k: v for k, v in two.items() if k != "answers_file"}
