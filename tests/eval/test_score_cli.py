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
