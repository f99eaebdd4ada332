"""Streamed data: WebDataset / Parquet shards read as trained on, split by rank and worker without overlap, mixed by
weight, and resumed at the exact next sample from a checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from fusevlm import build_vlm
from fusevlm.data.dataset import Source, VLMCollator
from fusevlm.data.streaming import StreamingDataset, write_webdataset
from fusevlm.train.recipe import recipe_from_dict
from fusevlm.train.run import train
from fusevlm.train.trainer import VLMTrainer


@pytest.fixture(scope="module")
def parts(checkpoints):
    return str(checkpoints("vision", "clip", hidden=32)), str(checkpoints("llm", "llama"))


@pytest.fixture(scope="module")
def processor(parts):
    return build_vlm(parts[0], "mlp2x_gelu", parts[1])[1]


def llava_file(root: Path, n: int, prefix: str = "r") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    items = []
    for i in range(n):
        Image.new("RGB", (16, 16), (i * 9 % 256, 100, 0)).save(root / f"{prefix}{i}.png")
        items.append({"id": f"{prefix}{i}", "image": f"{prefix}{i}.png",
                      "conversations": [{"from": "human", "value": "<image>\nColour?"},
                                        {"from": "gpt", "value": f"shade {i}"}]})
    path = root / "data.json"
    path.write_text(json.dumps(items))
    return path


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("stream")
    written = write_webdataset(llava_file(root / "src", 24), root / "wds", shard_size=4)
    assert len(written) == 6
    return root / "wds"


def ids_of(dataset, workers: int) -> list[str]:
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, num_workers=workers,
                                         collate_fn=VLMCollator(pad_token_id=0))
    return [i for batch in loader for i in batch["sample_ids"]]


def test_ranks_and_workers_share_out_the_stream_without_overlap(shards, processor):
    seen = []
    for rank in range(2):
        dataset = StreamingDataset([Source(str(shards))], processor, model_max_length=128, rank=rank, world_size=2)
        seen.append(ids_of(dataset, workers=2))
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == sorted(f"r{i}" for i in range(24))
    assert len(seen[0]) == len(set(seen[0])) == 12


def test_entries_are_mixed_by_their_weights(tmp_path, processor):
    sources = []
    for name, n, weight in (("a", 300, 3), ("b", 300, 1)):
        rows = [{"id": f"{name}{i}", "conversations": json.dumps([{"from": "human", "value": "Hi?"},
                                                                 {"from": "gpt", "value": f"{name} {i}"}])}
                for i in range(n)]
        pq.write_table(pa.Table.from_pylist(rows), tmp_path / f"{name}.parquet")
        sources.append(Source(str(tmp_path / f"{name}.parquet"), num_samples=weight))
    dataset = StreamingDataset(sources, processor, model_max_length=64, seed=0)
    first = [item["sample_id"] for _, item in zip(range(200), dataset, strict=False)]
    share = sum(i.startswith("a") for i in first) / len(first)
    assert 0.65 < share < 0.85, share  # 0.75 expected
    assert dataset.tasks == ["a", "b"]


def run(parts, shards, out, max_steps, resume=None, stop_at=None):
    """Train on the stream; the sample ids of every step, in order."""
    seen: list[list[str]] = []
    original = VLMTrainer.compute_loss

    def recording(self, model, inputs, *args, **kwargs):
        seen.append(list(inputs["sample_ids"]))
        return original(self, model, inputs, *args, **kwargs)

    from transformers import TrainerCallback

    class Stop(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if stop_at is not None and state.global_step >= stop_at:
                control.should_training_stop = True
            return control

    values = {
        "model": {"vision": parts[0], "projector": "mlp2x_gelu", "llm": parts[1]},
        "data": [{"path": str(shards), "streaming": True}], "output_dir": str(out), "stage": "align",
        "template": "plain", "model_max_length": 128, "per_device_train_batch_size": 2, "max_steps": max_steps,
        "save_strategy": "steps", "save_steps": 2, "learning_rate": 1e-3, "seed": 0, "disable_tqdm": True,
        "dataloader_num_workers": 2, "report_to": "none",
    }
    if resume:
        values["resume_from_checkpoint"] = str(resume)
    VLMTrainer.compute_loss = recording
    try:
        train(recipe_from_dict(values), callbacks=[Stop()])
    finally:
        VLMTrainer.compute_loss = original
    return seen


def test_a_resumed_run_sees_exactly_the_samples_an_uninterrupted_one_does(parts, shards, tmp_path):
    whole = run(parts, shards, tmp_path / "whole", max_steps=7)
    assert len(whole) == 7 and len({i for step in whole for i in step}) == 14
    stopped = run(parts, shards, tmp_path / "part", max_steps=7, stop_at=3)  # off a save step: resumes from 2
    assert stopped == whole[:3]
    resumed = run(parts, shards, tmp_path / "part", max_steps=7, resume=tmp_path / "part" / "checkpoint-2")
    assert resumed == whole[2:]


@pytest.mark.parametrize("change, message", [
    ({"group_by_modality_length": True}, "group_by_modality_length needs every sample's length"),
    ({"max_steps": -1}, "streamed data has no length: set max_steps"),
    ({"data": [{"path": "a.tar", "streaming": True}, {"path": "b.json"}]}, "mixes streamed and cached entries"),
])
def test_what_a_stream_cannot_do_is_refused(parts, change, message):
    from fusevlm.train.recipe import RecipeError

    values = {"model": {"vision": parts[0], "llm": parts[1]}, "output_dir": "out", "max_steps": 2,
              "data": [{"path": "a.tar", "streaming": True}], **change}
    with pytest.raises(RecipeError, match=message):
        recipe_from_dict(values)


def test_a_bad_streamed_record_is_skipped_and_travels_with_the_next_sample(tmp_path, processor):
    turns = json.dumps([{"from": "human", "value": "Hi?"}, {"from": "gpt", "value": "yes"}])
    rows = [{"id": "a", "conversations": turns}, {"id": "bad", "conversations": "[{"}, {"id": "c", "conversations": turns}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    items = list(StreamingDataset([Source(str(tmp_path / "d.parquet"))], processor, model_max_length=64,
                                  on_bad_sample="skip"))
    assert [item["sample_id"] for item in items] == ["a", "c"]
    (error,) = items[1]["data_errors"]
    assert error["reason"] == "bad_json" and "record 1 (id 'bad'), field 'conversations'" in error["message"]
    with pytest.raises(Exception, match="malformed JSON string"):
        list(StreamingDataset([Source(str(tmp_path / "d.parquet"))], processor, model_max_length=64))


def test_streamed_samples_train_packed(parts, shards, tmp_path):
    values = {
        "model": {"vision": parts[0], "projector": "mlp2x_gelu", "llm": parts[1]},
        "data": [{"path": str(shards), "streaming": True}], "output_dir": str(tmp_path / "out"), "stage": "align",
        "template": "plain", "model_max_length": 128, "per_device_train_batch_size": 4, "max_steps": 2,
        "packing": True, "save_strategy": "no", "seed": 0, "disable_tqdm": True, "report_to": "none",
    }
    out = train(recipe_from_dict(values))
    report = json.loads((out / "data_report.json").read_text())
    assert report["skipped"] == 0 and report["samples"] is None
    assert (out / "model.safetensors").is_file()


@pytest.mark.parametrize("kind", ["jsonl folder", "saved dataset"])
def test_datasets_sources_stream_too(tmp_path, processor, kind):
    import datasets

    rows = [{"id": f"t{i}", "conversations": [{"from": "human", "value": "Hi?"}, {"from": "gpt", "value": f"{i}"}]}
            for i in range(6)]
    folder = tmp_path / "source"
    if kind == "jsonl folder":
        folder.mkdir()
        (folder / "part.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        datasets.Dataset.from_list(rows).save_to_disk(str(folder))
    seen = ids_of(StreamingDataset([Source(str(folder))], processor, model_max_length=64), workers=2)
    assert sorted(seen) == sorted(r["id"] for r in rows)
