"""Collated batches leave DataLoader workers inside the pickle (small tensors) or by shared memory (large ones)."""

import pickle
from multiprocessing.reduction import ForkingPickler

import torch
from torch.utils.data import DataLoader

from fusevlm.data.dataset import INLINE_TENSOR_BYTES, Batch, VLMCollator
from fusevlm.data.packing import PackingCollator


def _features(n: int, pixels: int = 8) -> list[dict]:
    generator = torch.Generator().manual_seed(n)
    return [
        {
            "input_ids": torch.randint(5, 50, (3 + i,), generator=generator),
            "labels": torch.randint(5, 50, (3 + i,), generator=generator),
            "pixel_values": torch.randn(1, 3, pixels, pixels, generator=generator),
            "task_id": i % 2,
            "data_errors": [{"id": f"r{i}"}] if i == 1 else [],
        }
        for i in range(n)
    ]


def _through_worker_pickler(batch: dict) -> dict:
    return pickle.loads(ForkingPickler.dumps(batch))


def _assert_same(received: dict, sent: dict) -> None:
    assert set(received) == set(sent)
    for key, value in sent.items():
        if isinstance(value, torch.Tensor):
            assert received[key].dtype == value.dtype, key
            assert torch.equal(received[key], value), key
        else:
            assert received[key] == value, key


def test_small_tensors_travel_inside_the_pickle_and_arrive_as_a_plain_dict():
    for collator in (VLMCollator(pad_token_id=0), PackingCollator(0, 64)):
        batch = collator(_features(4))
        assert isinstance(batch, Batch)
        received = _through_worker_pickler(batch)
        assert type(received) is dict
        _assert_same(received, batch)
        # Inline tensors own their memory: none of them sits in a shared-memory segment.
        assert not any(v.is_shared() for v in received.values() if isinstance(v, torch.Tensor))


def test_large_tensors_still_go_by_shared_memory():
    big = torch.zeros(INLINE_TENSOR_BYTES // 4 + 1)
    batch = Batch(pixel_values=big, input_ids=torch.ones(2, 3, dtype=torch.long))
    received = _through_worker_pickler(batch)
    assert received["pixel_values"].is_shared()
    assert not received["input_ids"].is_shared()
    _assert_same(received, batch)


def test_bfloat16_is_not_inlined_through_numpy():
    batch = Batch(pixel_values=torch.randn(2, 3, dtype=torch.bfloat16))
    received = _through_worker_pickler(batch)
    assert received["pixel_values"].is_shared()
    _assert_same(received, batch)


class _Samples(torch.utils.data.Dataset):
    def __init__(self, features: list[dict]):
        self.features = features

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, index: int) -> dict:
        return self.features[index]


def test_batches_from_two_workers_equal_the_in_process_ones():
    features = _features(8, pixels=4)
    collator = VLMCollator(pad_token_id=0)
    expected = [collator(features[i : i + 2]) for i in range(0, 8, 2)]
    loader = DataLoader(_Samples(features), batch_size=2, num_workers=2, collate_fn=collator)
    received = list(loader)
    assert len(received) == len(expected)
    for got, want in zip(received, expected, strict=True):
        _assert_same(got, want)
