"""Files, reproducibility, split disjointness and balance of the synthetic dataset."""

import hashlib
import json
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from PIL import Image

from fusevlm.data import synthetic
from fusevlm.data.synthetic import TASKS, answer_space, blind_chance, load_split


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _pixel_hash(root: Path, name: str) -> str:
    return hashlib.sha1(Image.open(root / "images" / name).convert("RGB").tobytes()).hexdigest()


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    kwargs = {"num_train": 40, "num_eval": 24, "num_align": 8}
    synthetic.generate(tmp_path / "a", seed=7, **kwargs)
    synthetic.generate(tmp_path / "b", seed=7, **kwargs)
    synthetic.generate(tmp_path / "c", seed=8, **kwargs)
    a, b, c = _files(tmp_path / "a"), _files(tmp_path / "b"), _files(tmp_path / "c")
    assert len(a) == 40 + 24 + 8 + 4  # images + align/train/eval/meta json
    assert a == b
    assert a.keys() == c.keys()
    assert a["train.json"] != c["train.json"]
    differing = [k for k in a if k.endswith(".png") and a[k] != c[k]]
    assert len(differing) > 0.8 * (40 + 24 + 8)


def test_regenerating_smaller_removes_stale_images(tmp_path):
    synthetic.generate(tmp_path, num_train=20, num_eval=10, num_align=5)
    synthetic.generate(tmp_path, num_train=8, num_eval=4, num_align=2)
    assert len(list((tmp_path / "images").glob("*.png"))) == 8 + 4 + 2


def test_files_and_meta_agree(dataset):
    root, meta = dataset
    assert json.loads((root / "meta.json").read_text()) == meta
    for split in ("align", "train", "eval"):
        records = load_split(root, split)
        assert meta["counts"][split] == dict(Counter(r["task"] for r in records))
        assert len({r["id"] for r in records}) == len(records)
        for r in records:
            assert (root / meta["image_root"] / r["image"]).is_file()
            human, gpt = r["conversations"]
            assert human["from"] == "human" and human["value"].startswith("<image>\n")
            assert human["value"].count("<image>") == 1
            assert gpt["from"] == "gpt" and gpt["value"]
    assert len(load_split(root, "align")) == 80
    assert len(load_split(root, "train")) == 320
    assert len(load_split(root, "eval")) == 240


def test_every_task_present_and_balanced_across_tasks(dataset):
    _, meta = dataset
    assert set(meta["counts"]["align"]) == {"caption"}
    for split, n in (("train", 320), ("eval", 240)):
        assert set(meta["counts"][split]) == set(TASKS)
        assert set(meta["counts"][split].values()) == {n // len(TASKS)}


def test_chance_in_meta():
    chance = blind_chance()
    assert chance["color"] == pytest.approx(1 / 6)
    assert chance["shape"] == pytest.approx(1 / 6)
    assert chance["position"] == pytest.approx(1 / 4)
    assert chance["count"] == pytest.approx(1 / 3)
    assert chance["ocr"] == pytest.approx(1 / 8)
    assert chance["grounding"] == pytest.approx(1 / 20)
    assert chance["region"] == pytest.approx(1 / 36)
    assert chance["caption"] == pytest.approx(1 / 36)


def test_splits_share_no_image_file_or_pixels(dataset):
    root, _ = dataset
    names = {split: {r["image"] for r in load_split(root, split)} for split in ("align", "train", "eval")}
    assert not names["eval"] & (names["train"] | names["align"])
    training = {_pixel_hash(root, n) for n in names["train"] | names["align"]}
    held_out = {_pixel_hash(root, n) for n in names["eval"]}
    assert not held_out & training


def test_eval_redraws_images_seen_in_training(tmp_path):
    # Build the same split twice: without the guard the second copy would repeat every image of the first.
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    seen: set[bytes] = set()
    kwargs = {"image_size": 64, "seed": 0}
    synthetic._build_split("eval", TASKS, 32, images_dir=first, seen=seen, forbidden=set(), **kwargs)
    again: set[bytes] = set()
    _, redraws = synthetic._build_split(
        "eval", TASKS, 32, images_dir=second, seen=again, forbidden=seen, **kwargs
    )
    assert redraws >= 1
    assert not again & seen


def test_answers_balanced_within_each_task(dataset):
    root, _ = dataset
    for split in ("train", "eval"):
        by_task: dict[str, Counter] = defaultdict(Counter)
        for r in load_split(root, split):
            by_task[r["task"]][r["conversations"][1]["value"]] += 1
        for task in ("color", "shape", "position", "count", "ocr"):
            counts = by_task[task]
            assert set(counts) <= {str(a) for a in answer_space(task)}
            if sum(counts.values()) >= len(answer_space(task)):
                assert max(counts.values()) - min(counts.values()) <= 1, (split, task, counts)
        # grounding and region have 20 and 36 answers: at most one more than the rest, never a favourite
        for task in ("grounding", "region"):
            assert max(by_task[task].values()) <= -(-sum(by_task[task].values()) // len(answer_space(task)))


def test_questions_see_one_object_and_count_scenes_one_to_three(dataset):
    root, _ = dataset
    for task in TASKS:
        if task == "ocr":
            continue
        sizes = Counter(len(r["objects"]) for r in load_split(root, "train") if r["task"] == task)
        assert set(sizes) == ({1, 2, 3} if task == "count" else {1}), (task, sizes)
        assert max(sizes.values()) - min(sizes.values()) <= 1, (task, sizes)


def test_blind_model_stays_near_chance(dataset):
    """A lookup table question -> most frequent training answer must not beat chance by much on eval."""
    root, _ = dataset
    table: dict[tuple[str, str], Counter] = defaultdict(Counter)
    for r in load_split(root, "train"):
        table[(r["task"], r["conversations"][0]["value"])][r["conversations"][1]["value"]] += 1
    overall: dict[str, Counter] = defaultdict(Counter)
    for (task, _), answers in table.items():
        overall[task].update(answers)
    hits: dict[str, list[bool]] = defaultdict(list)
    for r in load_split(root, "eval"):
        key = (r["task"], r["conversations"][0]["value"])
        guess_from = table[key] if key in table else overall[r["task"]]
        hits[r["task"]].append(guess_from.most_common(1)[0][0] == r["conversations"][1]["value"])
    chance = blind_chance()
    for task, h in hits.items():
        n = len(h)
        sigma = (chance[task] * (1 - chance[task]) / n) ** 0.5
        assert sum(h) / n <= chance[task] + 3 * sigma + 1 / n, (task, sum(h) / n)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tasks": ("color", "weather")}, "tasks"),
        ({"tasks": ()}, "tasks"),
        ({"image_size": 16}, "image_size"),
        ({"num_align": -1}, "counts"),
    ],
)
def test_bad_arguments_are_errors(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        synthetic.generate(tmp_path, num_train=4, num_eval=4, **kwargs)


def test_task_subset(tmp_path):
    meta = synthetic.generate(tmp_path, num_train=12, num_eval=6, tasks=("color", "shape"))
    assert set(meta["counts"]["train"]) == {"color", "shape"}
    assert set(meta["counts"]["eval"]) == {"color", "shape"}
