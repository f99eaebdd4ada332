"""The MFT loss from the model's per-position losses: packed rows (``sample_index``) give the unpacked losses."""

import pytest
import torch
from PIL import Image
from torch import nn
from transformers import TrainingArguments

from fusevlm import build_vlm
from fusevlm.train.trainer import VLMTrainer, mft_loss, mft_loss_from_token_losses

SAMPLES = [  # (prompt, answer, image colour or None, task)
    ("<image>\nWhat color is the circle?", " red. What shape is it? square.", (220, 30, 30), 0),
    ("Describe the image.", " It shows three blue triangles", None, 1),
    ("<image>\nHow many?", " 2.", (30, 30, 220), 0),
    ("<image>\nWhat shape is it?", " a green star", (30, 180, 30), 2),
]


def random_rows(lengths, trained_from, seed=0):
    """Per-sample token losses and masks, as unpadded (T_i - 1,) pieces."""
    g = torch.Generator().manual_seed(seed)
    pieces = []
    for length, start in zip(lengths, trained_from, strict=True):
        losses = torch.rand(length - 1, generator=g) * 5
        mask = torch.arange(1, length) >= start
        pieces.append((losses * mask, mask))
    return pieces


def unpacked(pieces):
    width = max(len(loss) for loss, _ in pieces)
    losses = torch.zeros(len(pieces), width)
    mask = torch.zeros(len(pieces), width, dtype=torch.bool)
    for row, (loss, m) in enumerate(pieces):
        losses[row, : len(loss)], mask[row, : len(m)] = loss, m
    return losses, mask


def packed(pieces, rows, width):
    """Samples laid out in ``rows`` (lists of sample numbers), padded to ``width`` tokens; -1 marks padding."""
    losses = torch.zeros(len(rows), width - 1)
    mask = torch.zeros(len(rows), width - 1, dtype=torch.bool)
    sample_index = torch.full((len(rows), width), -1)
    for r, members in enumerate(rows):
        at = 0
        for i in members:
            loss, m = pieces[i]
            n = len(loss) + 1  # tokens of sample i
            sample_index[r, at : at + n] = i
            # token 0 of a sample is never a target (its label is -100); its tokens 1.. sit at at+1..
            losses[r, at : at + n - 1], mask[r, at : at + n - 1] = loss, m
            at += n
        assert at <= width
    return losses, mask, sample_index


@pytest.mark.parametrize("mode", ["token", "sample"])
def test_sample_index_gives_the_unpacked_loss_sums_and_counts(mode):
    lengths, trained_from = [9, 5, 12, 7, 4], [3, 1, 8, 2, 4]  # sample 4 has no trained token
    task_ids = torch.tensor([0, 1, 0, 2, 1])
    pieces = random_rows(lengths, trained_from)
    expected = mft_loss_from_token_losses(*unpacked(pieces), task_ids, 4, mode)
    for rows in ([[0, 1, 2, 3, 4]], [[2, 1], [0, 4, 3]], [[3], [1, 0], [2, 4]]):
        losses, mask, sample_index = packed(pieces, rows, width=40)
        got = mft_loss_from_token_losses(losses, mask, task_ids, 4, mode, sample_index)
        for a, b in zip(got, expected, strict=True):
            torch.testing.assert_close(a, b)
    assert expected[2].tolist() == [float(6 + 4), 4.0, 5.0, 0.0]


def test_logits_form_equals_token_losses_form():
    torch.manual_seed(0)
    logits = torch.randn(3, 6, 11)
    labels = torch.tensor([[-100, 1, 2, 3, 4, -100], [-100, -100, 5, 6, -100, -100], [-100] * 6])
    task_ids = torch.tensor([1, 0, 1])
    full = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 11), labels[:, 1:].reshape(-1),
                                             reduction="none", ignore_index=-100).view(3, 5)
    for mode in ("token", "sample"):
        a = mft_loss(logits, labels, task_ids, 2, mode)
        b = mft_loss_from_token_losses(full, labels[:, 1:] != -100, task_ids, 2, mode)
        for x, y in zip(a, b, strict=True):
            torch.testing.assert_close(x, y)


def model_and_batches(checkpoints):
    torch.manual_seed(0)
    model, processor = build_vlm(
        str(checkpoints("vision", "siglip", hidden=64)), "mlp2x_gelu", str(checkpoints("llm", "qwen2"))
    )
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    encoded = []
    for prompt, answer, colour, _ in SAMPLES:
        images = [Image.new("RGB", (32, 32), colour)] if colour else []
        ids = processor(text=[prompt + answer], images=[images])["input_ids"][0]
        labels = ids.clone()
        labels[: processor(text=[prompt], images=[images])["input_ids"].shape[1]] = -100
        pixels = processor.image_processor(images, return_tensors="pt")["pixel_values"] if images else None
        encoded.append((ids, labels, pixels))
    task_ids = torch.tensor([task for *_, task in SAMPLES])
    pixel_values = torch.cat([p for *_, p in encoded if p is not None])

    width = max(len(ids) for ids, _, _ in encoded)
    pad = processor.tokenizer.pad_token_id
    plain = {
        "input_ids": torch.stack([nn.functional.pad(ids, (0, width - len(ids)), value=pad) for ids, _, _ in encoded]),
        "labels": torch.stack([nn.functional.pad(lab, (0, width - len(lab)), value=-100) for _, lab, _ in encoded]),
        "attention_mask": torch.stack([(torch.arange(width) < len(ids)).long() for ids, _, _ in encoded]),
        "pixel_values": pixel_values,
        "task_ids": task_ids,
    }
    # two packed rows: samples 0, 1 in the first, 2, 3 in the second, right-padded
    rows = [[0, 1], [2, 3]]
    width = max(sum(len(encoded[i][0]) for i in row) for row in rows) + 3
    packed_batch = {key: [] for key in ("input_ids", "labels", "position_ids", "sample_index")}
    for row in rows:
        ids = torch.cat([encoded[i][0] for i in row])
        pad_n = width - len(ids)
        packed_batch["input_ids"].append(nn.functional.pad(ids, (0, pad_n), value=pad))
        packed_batch["labels"].append(nn.functional.pad(torch.cat([encoded[i][1] for i in row]), (0, pad_n),
                                                        value=-100))
        positions = torch.cat([torch.arange(len(encoded[i][0])) for i in row] + [torch.arange(pad_n)])
        packed_batch["position_ids"].append(positions)
        owners = torch.cat([torch.full((len(encoded[i][0]),), i) for i in row] + [torch.full((pad_n,), -1)])
        packed_batch["sample_index"].append(owners)
    packed_batch = {key: torch.stack(value) for key, value in packed_batch.items()}
    packed_batch.update(attention_mask=None, pixel_values=pixel_values, task_ids=task_ids)
    return model, plain, packed_batch


@pytest.mark.parametrize("mode", ["token", "sample"])
def test_trainer_mft_loss_packed_equals_unpacked_and_full_logits(checkpoints, tmp_path, mode):
    model, plain, packed_batch = model_and_batches(checkpoints)
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[], per_device_train_batch_size=4,
                             gradient_accumulation_steps=2)
    trainer = VLMTrainer(model=model, args=args, tasks=["a", "b", "c"], mft_loss_mode=mode)
    assert trainer.loss_is_scaled_for_ga is False  # a per-batch mean: the Trainer divides it by the GA steps

    # reference: the full logits (eval mode) through the logits form of the loss
    model.eval()
    with torch.no_grad():
        logits = model(**{k: v for k, v in plain.items() if k not in ("labels", "task_ids")}).logits
    reference, ref_sums, ref_counts = mft_loss(logits, plain["labels"], plain["task_ids"], 3, mode)

    model.train()
    losses = {}
    for name, batch in (("plain", plain), ("packed", packed_batch)):
        trainer._task_sums.zero_()
        trainer._task_counts.zero_()
        model.zero_grad()
        loss, outputs = trainer.compute_loss(model, dict(batch), return_outputs=True)
        assert outputs.logits is None  # the training path: no full logits
        loss.backward()
        losses[name] = (loss.detach(), trainer._task_sums.clone(), trainer._task_counts.clone(),
                        {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        torch.testing.assert_close(loss.detach(), reference, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(losses[name][1].float(), ref_sums, rtol=1e-5, atol=1e-4)
        assert losses[name][2].tolist() == ref_counts.tolist()
    for n, grad in losses["plain"][3].items():
        torch.testing.assert_close(losses["packed"][3][n], grad, rtol=1e-4, atol=1e-5, msg=n)
