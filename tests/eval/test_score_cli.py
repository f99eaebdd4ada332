"""`fusevlm score` on a TextVQA-format file: the table, scores.json, and the refusal of a foreign answers file."""

import json

from scoring_builders import write_json

from fusevlm.cli import main


def test_score_command_writes_the_table_and_scores(tmp_path, capsys):
    data = write_json(tmp_path / "TextVQA_0.5.1_val.json", {"data": [
        {"question_id": 1, "question": "what brand?", "image_id": "a", "answers": ["nokia"] * 10},
        {"question_id": 2, "question": "what year?", "image_id": "b", "answers": ["1999"] * 10},
    ]})
    answers = write_json(tmp_path / "answers.json", [{"question_id": 1, "answer": "Nokia."},
                                                     {"question_id": 2, "answer": "2001"}])
    assert main(["score", "--benchmark", "textvqa", "--data", str(data), "--answers", str(answers),
                 "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "textvqa" in printed and "50.0" in printed
    scores = json.loads((tmp_path / "out" / "scores.json").read_text())
    assert scores["score"] == 50.0 and scores["n_scored"] == 2 and scores["n_total"] == 2
    assert (tmp_path / "out" / "scores.md").read_text().startswith("|")

    foreign = write_json(tmp_path / "gqa_answers.json", [{"questionId": "1", "prediction": "yes"}])
    assert main(["score", "--benchmark", "textvqa", "--data", str(data), "--answers", str(foreign)]) == 2
    assert "gqa_answers.json" in capsys.readouterr().err


def test_score_command_takes_the_mmbench_rule_set(mmbench_file, tmp_path):
    answers = tmp_path / "answers.jsonl"
    preds = {1: "The answer is A", 1000001: "D", 2000001: "C", 3000001: "B", 2: "A", 1000002: "C", 2000002: "B"}
    answers.write_text("".join(json.dumps({"question_id": k, "text": v}) + "\n" for k, v in preds.items()))
    for rules, score in (("official", 100.0), ("verbose", 50.0)):
        out = tmp_path / rules
        assert main(["score", "--benchmark", "mmbench", "--data", str(mmbench_file), "--answers", str(answers),
                     "--rules", rules, "--out", str(out)]) == 0
        scores = json.loads((out / "scores.json").read_text())
        assert (scores["rules"], scores["score"]) == (rules, score)
