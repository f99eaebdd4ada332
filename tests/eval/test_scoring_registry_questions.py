"""Registry, Markdown table, question lists (prompts, images) and answer writers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fusevlm.eval.scoring import SCORERS, ScoringError, format_table, load_questions, score, write_answers

SUFFIX = "\nAnswer the question using a single word or phrase."


def test_registry_lists_every_benchmark() -> None:
    assert set(SCORERS) == {
        "vqav2",
        "textvqa",
        "vizwiz",
        "gqa",
        "mmbench",
        "mmbench_cn",
        "scienceqa",
        "pope",
        "mme",
    }
    with pytest.raises(ScoringError, match="unknown benchmark 'okvqa'"):
        score("okvqa", "x", "y")


def _result(name: str, value: float, scored: int, total: int, unresolved: int = 0) -> dict:
    return {
        "benchmark": name,
        "metric": "acc",
        "score": value,
        "n_scored": scored,
        "n_total": total,
        "splits": {},
        "unresolved": [{}] * unresolved,
    }


def test_format_table() -> None:
    table = format_table(
        [_result("gqa", 61.98765, 12578, 12578), _result("pope", 85.0, 10, 12, unresolved=2)]
    )
    lines = table.strip().splitlines()
    assert lines[0] == "| Benchmark | Metric | Score | Answered / total | Unresolved |"
    assert lines[2] == "| gqa | acc | 61.99 | 12578 / 12578 | 0 |"
    assert lines[3] == "| pope | acc | 85.00 | 10 / 12 (partial) | 2 |"


def test_vqa_family_questions(vqav2_dir: Path, textvqa_file: Path, vizwiz_file: Path, tmp_path: Path) -> None:
    qs = load_questions("vqav2", vqav2_dir, tmp_path / "val2014")
    assert qs[0] == {
        "question_id": 1,
        "image": tmp_path / "val2014" / "COCO_val2014_000000000042.jpg",
        "prompt": "What is the man wearing?" + SUFFIX,
    }
    # the annotations file alone finds its sibling questions file
    assert len(load_questions("vqav2", vqav2_dir / "v2_mscoco_val2014_annotations.json", tmp_path)) == 4
    tq = load_questions("textvqa", textvqa_file, tmp_path / "train_images")
    assert tq[0]["image"] == tmp_path / "train_images" / "abc.jpg"
    assert tq[0]["prompt"] == "What brand is it?" + SUFFIX
    vq = load_questions("vizwiz", vizwiz_file, tmp_path / "val")
    assert vq[1]["question_id"] == "VizWiz_val_00000001.jpg"
    assert vq[1]["prompt"] == (
        "What color?\nWhen the provided information is insufficient, respond with 'Unanswerable'." + SUFFIX
    )
    with pytest.raises(ScoringError, match="images_dir is required"):
        load_questions("vqav2", vqav2_dir, None)


def test_other_questions(gqa_file: Path, scienceqa_dir: Path, pope_dir: Path, tmp_path: Path) -> None:
    gq = load_questions("gqa", gqa_file, tmp_path / "images")
    assert [q["question_id"] for q in gq] == ["201", "202", "203"]  # balanced questions only
    assert gq[0]["image"] == tmp_path / "images" / "n1.jpg"
    assert gq[0]["prompt"] == "Is the cup on the table?" + SUFFIX
    sq = load_questions("scienceqa", scienceqa_dir, tmp_path / "test")
    assert [q["question_id"] for q in sq] == ["1", "2", "3", "4"]  # test split, with image
    assert sq[0]["image"] == tmp_path / "test" / "1" / "image.png"
    assert sq[0]["prompt"] == (
        "Which is a mammal?\nA. shark\nB. whale\nAnswer with the option's letter from the given choices directly."
    )
    assert sq[1]["prompt"].startswith("Context: Read the poem.\nWhich word rhymes?\nA. cat\nB. dog\nC. hat\n")
    pq = load_questions("pope", pope_dir, tmp_path / "val2014")
    assert [q["question_id"] for q in pq][:3] == ["adversarial/1", "adversarial/2", "random/1"]
    assert pq[2]["prompt"] == "Is there a dog in the image?" + SUFFIX
    assert pq[2]["image"] == tmp_path / "val2014" / "COCO_val2014_000000000001.jpg"


def test_written_answers_score_back(
    vqav2_dir: Path, vizwiz_file: Path, gqa_file: Path, scienceqa_dir: Path, pope_dir: Path, tmp_path: Path
) -> None:
    vqa = write_answers(
        "vqav2",
        [{"question_id": 2, "answer": " Three "}, {"question_id": 3, "answer": "yes"}],
        tmp_path / "vqa.json",
    )
    assert json.loads(vqa.read_text()) == [
        {"question_id": 2, "answer": "Three"},
        {"question_id": 3, "answer": "yes"},
    ]
    processed = write_answers("vqav2", {2: "Three dogs!"}, tmp_path / "vqa_evalai.json", rules="evalai")
    assert json.loads(processed.read_text()) == [{"question_id": 2, "answer": "3 dogs"}]
    r = score("vqav2", vqav2_dir, vqa)
    assert r["score"] == pytest.approx(100 * (1.0 + 1.0) / 4)

    viz = write_answers("vizwiz", {"VizWiz_val_00000000.jpg": "can"}, tmp_path / "viz.json")
    assert json.loads(viz.read_text()) == [{"image": "VizWiz_val_00000000.jpg", "answer": "can"}]
    assert score("vizwiz", vizwiz_file, viz)["n_scored"] == 1

    gqa = write_answers("gqa", [{"question_id": "201", "answer": "Yes."}], tmp_path / "gqa.json")
    assert json.loads(gqa.read_text()) == [{"questionId": "201", "prediction": "yes"}]

    sqa = write_answers("scienceqa", [{"question_id": "1", "text": "B"}], tmp_path / "sqa.jsonl")
    assert score("scienceqa", scienceqa_dir, sqa)["score"] == pytest.approx(25.0)

    pope = write_answers("pope", {"random/1": "Yes"}, tmp_path / "pope.jsonl")
    assert json.loads(pope.read_text().splitlines()[0]) == {"question_id": "random/1", "text": "Yes"}

    with pytest.raises(ScoringError, match="needs the benchmark data file"):
        write_answers("mmbench", {1: "A"}, tmp_path / "x.tsv")
    with pytest.raises(ScoringError, match="duplicate question_id"):
        write_answers(
            "gqa",
            [{"question_id": "1", "answer": "a"}, {"question_id": "1", "answer": "b"}],
            tmp_path / "d.json",
        )
