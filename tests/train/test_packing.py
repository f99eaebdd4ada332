"""Packing through the model: each sample's loss as if it were alone in its row; training with ``packing: true``."""

import json
import random
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import AttentionInterface

from fusevlm import build_vlm
from fusevlm.data.dataset import Source, VLMCollator, load_mixture
from fusevlm.data.packing import PackingCollator, pack_rows, per_sample_losses, without_cache
from fusevlm.templates import get_template
from fusevlm.train.recipe import recipe_from_dict
from fusevlm.train.run import train

COLORS = {"red": (220, 30, 30), "green": (30, 180, 30), "blue": (30, 30, 220)}
LONG = ("the quick brown fox jumps over the lazy dog and a cat sits on a mat with three blue triangles "
        "and a green star beside it")


def write_mixture(root: Path, n: int, seed: int, name: str, task: str) -> dict:
    """Skewed lengths: short answers, two-image questions, text-only turns, long multi-turn captions."""
    rng = random.Random(seed)
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(n):
        color = rng.choice(sorted(COLORS))
        files = []
        for k in range(2):
            file = f"{Path(name).stem}_{i}_{k}.png"
            Image.new("RGB", (32 + 8 * k, 32), COLORS[rng.choice(sorted(COLORS))]).save(images / file)
            files.append(file)
        kind = i % 4
        if kind == 0:
            record = {"image": files[0], "conversations": [
                {"from": "human", "value": "<image>\nWhat color is it?"}, {"from": "gpt", "value": color}]}
        elif kind == 1:
            record = {"images": files, "conversations": [
                {"from": "human", "value": "<image>\n<image>\nSame colour?"}, {"from": "gpt", "value": "no"}]}
        elif kind == 2:
            record = {"conversations": [{"from": "human", "value": "Say a word."}, {"from": "gpt", "value": "cat"}]}
        else:
            words = LONG.split()[: rng.randint(8, 22)]
            record = {"image": files[0], "conversations": [
                {"from": "human", "value": "<image>\nDescribe the image."}, {"from": "gpt", "value": " ".join(words)},
                {"from": "human", "value": "And its colour?"}, {"from": "gpt", "value": color}]}
        record.update(id=f"{task}-{i}", task=task)
        records.append(record)
    path = root / name
    path.write_text(json.dumps(records))
    return {"path": str(path), "image_root": str(images), "task": task}


@pytest.fixture(scope="module")
def mixture(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixture")
    return [write_mixture(root, 12, 0, "vqa.json", "vqa"), write_mixture(root, 8, 1, "caption.json", "caption")]


def build(checkpoints, family):
    torch.manual_seed(0)
    return build_vlm(str(checkpoints("vision", "clip", hidden=64)), "mlp2x_gelu", str(checkpoints("llm", family)))


def features_of(mixture, processor, max_length=256):
    sources = [Source(entry["path"], image_root=entry["image_root"], task=entry["task"]) for entry in mixture]
    dataset = load_mixture(sources, processor, model_max_length=max_length, chat_template=get_template("chatml"))
    assert dataset.tasks == ["vqa", "caption"]
    return [dataset[i] for i in range(len(dataset))]


def padded_sample_losses(model, features, pad_id):
    batch = VLMCollator(pad_token_id=pad_id)(features)
    logits = model(input_ids=batch["input_ids"], pixel_values=batch["pixel_values"],
                   attention_mask=batch["attention_mask"]).logits
    B, T = batch["input_ids"].shape
    return per_sample_losses(logits, batch["labels"], torch.arange(B)[:, None].expand(B, T), B)


@pytest.mark.parametrize("family", ["llama", "qwen2", "gpt2"])
def test_packed_per_sample_losses_equal_unpacked(checkpoints, mixture, family):
    model, processor = build(checkpoints, family)
    model.eval()
    features = features_of(mixture, processor)
    lengths = [len(f["input_ids"]) for f in features]
    assert max(lengths) > 3 * min(lengths)  # the mixture is skewed
    pad_id = processor.tokenizer.pad_token_id
    batch = PackingCollator(pad_token_id=pad_id, max_length=256)(features)
    per_row_images = (batch["input_ids"] == processor.image_token_id).sum(1) // processor.image_seq_length
    assert batch["input_ids"].shape[0] < len(features) / 2 and per_row_images.max() >= 3
    order = [i for row in pack_rows(lengths, 256) for i in row]
    with torch.no_grad():
        # check_image_tokens counts per row: rows holding several samples' images pass it.
        logits = model(input_ids=batch["input_ids"], pixel_values=batch["pixel_values"],
                       position_ids=batch["position_ids"], use_cache=False).logits
        sums, counts = per_sample_losses(logits, batch["labels"], batch["sample_index"], len(features))
        ref_sums, ref_counts = padded_sample_losses(model, features, pad_id)
    assert counts.tolist() == ref_counts[order].tolist() and (counts > 0).all()
    torch.testing.assert_close(sums / counts, (ref_sums / ref_counts)[order], rtol=0, atol=1e-5)


def varlen_reference(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Flash-attention's varlen contract in plain torch: no mask; causal attention within each cu_seq_lens span
    of the flattened rows. Fails (KeyError) if the collator's kwargs do not reach the attention layers."""
    cu = kwargs["cu_seq_lens_q"].tolist()
    spans = list(zip(cu[:-1], cu[1:], strict=True))
    assert attention_mask is None and kwargs["max_length_q"] == max(b - a for a, b in spans)
    VARLEN_CALLS.append(query.shape[0])
    B, H, T, D = query.shape
    groups = H // key.shape[1]
    q = query.transpose(1, 2).reshape(B * T, H, D)
    k, v = (x.transpose(1, 2).reshape(B * T, -1, D).repeat_interleave(groups, dim=1) for x in (key, value))
    out = torch.empty_like(q)
    for a, b in spans:
        out[a:b] = torch.nn.functional.scaled_dot_product_attention(
            q[a:b].transpose(0, 1), k[a:b].transpose(0, 1), v[a:b].transpose(0, 1), is_causal=True, scale=scaling,
        ).transpose(0, 1)
    return out.view(B, T, H, D), None


VARLEN_CALLS: list[int] = []


def test_flash_style_varlen_attention_over_several_packed_rows(checkpoints, mixture):
    """The GPU path: flash-attention reads cu_seq_lens (several rows) instead of a mask; emulated on CPU."""
    model, processor = build(checkpoints, "llama")
    model.eval()
    features = features_of(mixture, processor)
    pad_id = processor.tokenizer.pad_token_id
    with torch.no_grad():
        ref_sums, ref_counts = padded_sample_losses(model, features, pad_id)
        AttentionInterface.register("varlen_reference", varlen_reference)
        model.language_model.set_attn_implementation("varlen_reference")
        batch = PackingCollator(pad_token_id=pad_id, max_length=256, flash_attn_kwargs=True)(features)
        assert batch["input_ids"].shape[0] > 1
        VARLEN_CALLS.clear()
        logits = model(input_ids=batch["input_ids"], pixel_values=batch["pixel_values"],
                       position_ids=batch["position_ids"], use_cache=False,
                       **{k: batch[k] for k in ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")},
                       ).logits
    assert VARLEN_CALLS == [batch["input_ids"].shape[0]] * model.config.text_config.num_hidden_layers
    sums, counts = per_sample_losses(logits, batch["labels"], batch["sample_index"], len(features))
    order = [i for row in pack_rows([len(f["input_ids"]) for f in features], 256) for i in row]
    torch.testing.assert_close(sums / counts, (ref_sums / ref_counts)[order], rtol=0, atol=1e-5)


def test_training_forward_on_packed_rows_gives_the_padded_loss_and_gradients(checkpoints, mixture):
    model, processor = build(checkpoints, "llama")  # no dropout anywhere in these tiny configs
    model.train()
    features = features_of(mixture, processor)[:10]
    pad_id = processor.tokenizer.pad_token_id

    def loss_and_grads(**inputs):
        model.zero_grad()
        loss = model(**inputs).loss
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    padded = VLMCollator(pad_token_id=pad_id)(features)
    packed = PackingCollator(pad_token_id=pad_id, max_length=256)(features)
    ref_loss, ref_grads = loss_and_grads(**{k: padded[k] for k in ("input_ids", "labels", "attention_mask",
                                                                    "pixel_values")})
    with without_cache(model):  # as train() runs it: no forward may build a cache
        loss, grads = loss_and_grads(**{k: packed[k] for k in ("input_ids", "labels", "position_ids",
                                                                "pixel_values")})
    assert model.config.get_text_config().use_cache is True  # restored
    torch.testing.assert_close(loss, ref_loss, rtol=0, atol=1e-5)
    assert set(grads) == set(ref_grads)
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], rtol=1e-4, atol=1e-6, msg=name)


def run(tmp_path, checkpoints, mixture, **overrides):
    values = {
        "model": {"vision": str(checkpoints("vision", "clip", hidden=64)), "projector": "mlp2x_gelu",
                  "llm": str(checkpoints("llm", "llama"))},
        "data": mixture, "output_dir": str(tmp_path / "out"), "stage": "instruct", "template": "chatml",
        "model_max_length": 192, "packing": True, "per_device_train_batch_size": 6, "learning_rate": 5e-3,
        "max_steps": 4, "logging_steps": 2, "save_strategy": "no", "seed": 0, "disable_tqdm": True,
        "dataloader_num_workers": 0, **overrides,
    }
    out = train(recipe_from_dict(values))
    return out, [h for h in json.loads((out / "log_history.json").read_text()) if "loss" in h]


def test_train_with_packing(checkpoints, mixture, tmp_path):
    out, logs = run(tmp_path, checkpoints, mixture)
    assert len(logs) == 2 and all(0 < h["loss"] < 20 for h in logs)
    config = json.loads((out / "config.json").read_text())
    assert config["text_config"].get("use_cache", True) is True  # packing's cache-free training is not saved


def test_train_with_packing_and_mft_logs_every_task(checkpoints, mixture, tmp_path):
    _, logs = run(tmp_path, checkpoints, mixture, mft_loss="token")
    assert len(logs) == 2
    for entry in logs:
        assert {"loss_vqa", "loss_caption"} <= set(entry), entry
        assert all(0 < v < 20 for k, v in entry.items() if k.startswith("loss_"))
