"""The packing collator's layout: rows, position ids, labels, sample numbers, images; and losses per sample."""

import pytest
import torch
from transformers.modeling_flash_attention_utils import prepare_fa_kwargs_from_position_ids

from fusevlm.data.dataset import IGNORE_INDEX, VLMCollator
from fusevlm.data.packing import PackingCollator, flash_attn_kwargs, pack_rows, per_sample_losses

PAD = 0


def feature(number: int, length: int, images: int = 0, task: int = 0) -> dict:
    """A sample whose tokens, labels and pixels all say which sample they belong to."""
    ids = torch.arange(length) + 100 * (number + 1)
    labels = ids.clone()
    labels[: length // 2] = IGNORE_INDEX  # a prompt, then trained tokens
    item = {"input_ids": ids, "labels": labels, "task_id": task, "data_errors": []}
    if images:
        item["pixel_values"] = torch.full((images, 3, 2, 2), float(number)) + torch.arange(images).view(-1, 1, 1, 1) / 10
    return item


def test_pack_rows_first_fit_decreasing_keeps_order_within_rows():
    lengths = [5, 9, 2, 7, 3, 4]
    rows = pack_rows(lengths, 10)
    assert sorted(i for row in rows for i in row) == list(range(6))
    assert all(sum(lengths[i] for i in row) <= 10 for row in rows)
    assert all(row == sorted(row) for row in rows) and [row[0] for row in rows] == sorted(row[0] for row in rows)
    assert rows == [[0, 5], [1], [2], [3, 4]]  # 9 | 7+3 | 5+4 | 2 by first fit, longest first
    assert rows == pack_rows(lengths, 10)  # deterministic
    assert pack_rows([12, 3], 10) == [[0], [1]]  # an over-long sample gets a row of its own
    with pytest.raises(ValueError):
        pack_rows([1], 0)


def test_collator_layout():
    features = [feature(0, 3, task=0), feature(1, 7, images=1, task=1), feature(2, 6, images=1, task=2),
                feature(3, 5, images=2, task=1)]
    batch = PackingCollator(pad_token_id=PAD, max_length=12)(features)
    rows = pack_rows([3, 7, 6, 5], 12)
    assert rows == [[0, 2], [1, 3]]  # 7+5 and 6+3: packed order differs from the sampler's
    order = [i for row in rows for i in row]
    assert batch["input_ids"].shape == (len(rows), max(sum(len(features[i]["input_ids"]) for i in r) for r in rows))
    assert "attention_mask" not in batch  # the mask comes from position_ids
    assert batch["task_ids"].tolist() == [features[i]["task_id"] for i in order]

    for r, row in enumerate(rows):
        offset = 0
        for i in row:
            n = len(features[i]["input_ids"])
            number = order.index(i)
            span = slice(offset, offset + n)
            assert batch["input_ids"][r, span].tolist() == features[i]["input_ids"].tolist()
            assert batch["position_ids"][r, span].tolist() == list(range(n))
            assert (batch["sample_index"][r, span] == number).all()
            assert batch["labels"][r, offset] == IGNORE_INDEX  # no sample learns from its neighbour
            assert batch["labels"][r, offset + 1 : offset + n].tolist() == features[i]["labels"][1:].tolist()
            offset += n
        tail = batch["input_ids"].shape[1] - offset
        assert batch["position_ids"][r, offset:].tolist() == list(range(tail))  # padding: a segment of its own
        assert (batch["input_ids"][r, offset:] == PAD).all() and (batch["labels"][r, offset:] == IGNORE_INDEX).all()
        assert (batch["sample_index"][r, offset:] == -1).all()

    # Images are stacked in token order: the samples' numbers in packed order, each sample's images in its order.
    expected = torch.cat([features[i]["pixel_values"] for i in order if "pixel_values" in features[i]])
    assert torch.equal(batch["pixel_values"], expected)
    assert "cu_seq_lens_q" not in batch


def test_every_sample_starts_with_an_ignored_label_even_if_trained():
    features = [feature(0, 4), feature(1, 4)]
    for f in features:
        f["labels"] = f["input_ids"].clone()
    batch = PackingCollator(pad_token_id=PAD, max_length=8)(features)
    assert batch["labels"][0].tolist() == [IGNORE_INDEX, 101, 102, 103, IGNORE_INDEX, 201, 202, 203]


def test_flash_kwargs_mark_every_sample_and_padding_tail():
    features = [feature(0, 6), feature(1, 3), feature(2, 5), feature(3, 7)]
    batch = PackingCollator(pad_token_id=PAD, max_length=12, flash_attn_kwargs=True)(features)
    positions = batch["position_ids"]
    cu = batch["cu_seq_lens_q"]
    assert cu.dtype == torch.int32 and torch.equal(cu, batch["cu_seq_lens_k"])
    starts = [r * positions.shape[1] + c for r in range(positions.shape[0]) for c in range(positions.shape[1])
              if positions[r, c] == 0]
    assert cu.tolist() == starts + [positions.numel()]
    assert batch["max_length_q"] == batch["max_length_k"] == int(cu.diff().max())
    # One row: the same as transformers' own reading of position ids.
    (ref_cu, _), (ref_max, _) = prepare_fa_kwargs_from_position_ids(positions[:1])
    one = flash_attn_kwargs(positions[:1])
    assert one["cu_seq_lens_q"].tolist() == ref_cu.tolist() and one["max_length_q"] == int(ref_max)


def toy_logits(input_ids: torch.Tensor, position_ids: torch.Tensor, vocab: int = 50) -> torch.Tensor:
    """Logits that depend on a token and its position in its sample only, as a correctly masked model's would."""
    g = torch.Generator().manual_seed(0)
    table = torch.randn(1000, vocab, generator=g)
    return table[input_ids % 1000] + torch.sin(position_ids.unsqueeze(-1) * torch.arange(vocab) / 7)


def test_per_sample_losses_packed_equal_padded():
    features = [feature(i, n, task=i % 2) for i, n in enumerate([6, 3, 9, 5, 2, 7])]
    for f in features:
        f["labels"] = torch.where(f["labels"] == IGNORE_INDEX, f["labels"], f["labels"] % 50)
        f["input_ids"] = f["input_ids"] % 1000
    packed = PackingCollator(pad_token_id=PAD, max_length=12)(features)
    padded = VLMCollator(pad_token_id=PAD)(features)
    order = [i for row in pack_rows([len(f["input_ids"]) for f in features], 12) for i in row]

    sums, counts = per_sample_losses(toy_logits(packed["input_ids"], packed["position_ids"]), packed["labels"],
                                     packed["sample_index"], len(features))
    B, T = padded["input_ids"].shape
    ref_sums, ref_counts = per_sample_losses(
        toy_logits(padded["input_ids"], torch.arange(T).expand(B, T)), padded["labels"],
        torch.arange(B)[:, None].expand(B, T), B)
    assert counts.tolist() == ref_counts[order].tolist()
    torch.testing.assert_close(sums, ref_sums[order], rtol=0, atol=1e-5)


def test_packing_collator_adds_flash_kwargs_only_for_flash_attention():
    from types import SimpleNamespace

    from fusevlm.data.packing import packing_collator

    def model(attention):
        text = SimpleNamespace(_attn_implementation=attention)
        return SimpleNamespace(config=SimpleNamespace(get_text_config=lambda: text))

    assert packing_collator(model("flash_attention_2"), PAD, 64).flash_attn_kwargs
    assert not packing_collator(model("sdpa"), PAD, 64).flash_attn_kwargs
    assert packing_collator(model("eager"), PAD, 64).max_length == 64
