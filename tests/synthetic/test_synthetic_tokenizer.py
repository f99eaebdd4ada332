"""The demo tokenizer: reload, special tokens, chat template and assistant mask."""

import json

import pytest
from transformers import AutoTokenizer

from fusevlm.data.synthetic import COLORS, POSITIONS, SHAPES, WORDS, load_split
from fusevlm.data.tokenizer import IM_END, IMAGE_TOKEN, SPECIAL_TOKENS, train_tokenizer

SHORT_ANSWER_TASKS = ("color", "shape", "position", "count", "ocr", "region")


def _messages(record) -> list[dict]:
    roles = {"human": "user", "gpt": "assistant"}
    return [{"role": roles[t["from"]], "content": t["value"]} for t in record["conversations"]]


@pytest.fixture(scope="module")
def tok(tokenizer_dir):
    return AutoTokenizer.from_pretrained(tokenizer_dir)


def test_reload_keeps_ids_specials_and_template(dataset, tokenizer_dir, tmp_path):
    trained = train_tokenizer(
        ["a red circle"] * 3 + [r["conversations"][1]["value"] for r in load_split(dataset[0], "train")],
        tmp_path,
    )
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert again.get_vocab() == trained.get_vocab()
    assert again.chat_template == trained.chat_template
    assert again.eos_token == "<|endoftext|>" and again.pad_token == "<|pad|>"
    assert again.pad_token_id != again.eos_token_id
    assert again.image_token == IMAGE_TOKEN and again.image_token_id == trained.image_token_id
    assert again.convert_tokens_to_ids(IM_END) == again.im_end_token_id
    text = "<|im_start|>user\n<image>\nWhat color is the star?<|im_end|>\n"
    assert again(text)["input_ids"] == trained(text)["input_ids"]
    assert set(SPECIAL_TOKENS) <= set(again.all_special_tokens)


def test_vocab_size_is_respected_and_checked(dataset, tmp_path):
    texts = [t["value"] for r in load_split(dataset[0], "train") for t in r["conversations"]]
    assert len(train_tokenizer(texts, tmp_path / "small", vocab_size=300)) == 300
    assert len(train_tokenizer(texts, tmp_path / "big", vocab_size=512)) <= 512
    with pytest.raises(ValueError, match="vocab_size"):
        train_tokenizer(texts, tmp_path / "tiny", vocab_size=200)


def test_image_token_is_one_id_even_when_repeated(tok):
    ids = tok(IMAGE_TOKEN * 64, add_special_tokens=False)["input_ids"]
    assert ids == [tok.image_token_id] * 64
    ids = tok(f"x{IMAGE_TOKEN}{IMAGE_TOKEN}\n", add_special_tokens=False)["input_ids"]
    assert ids.count(tok.image_token_id) == 2
    assert tok.decode(ids) == f"x{IMAGE_TOKEN}{IMAGE_TOKEN}\n"


def test_byte_level_round_trip_of_unseen_text(tok):
    text = "Zebra ünïcode 漢字 🙂 <html> [12, 345]\t\n end"
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text


def test_answers_are_short(dataset, tok):
    for r in load_split(dataset[0], "eval"):
        if r["task"] in SHORT_ANSWER_TASKS:
            n = len(tok(r["conversations"][1]["value"], add_special_tokens=False)["input_ids"])
            assert 1 <= n <= 3, (r["task"], r["conversations"][1]["value"], n)
    for word in [*COLORS, *SHAPES, *WORDS, *POSITIONS]:
        assert len(tok(word, add_special_tokens=False)["input_ids"]) <= 2, word


def test_chat_template_text(tok):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "<image>\nWhat color is the star?"},
        {"role": "assistant", "content": "red"},
    ]
    assert tok.apply_chat_template(messages, tokenize=False) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\n<image>\nWhat color is the star?<|im_end|>\n"
        "<|im_start|>assistant\nred<|im_end|>\n"
    )
    prompt = tok.apply_chat_template(messages[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_end|>\n<|im_start|>assistant\n")
    # structured content (as processors pass it) renders the same text
    parts = [{"type": "image"}, {"type": "text", "text": "\nWhat color is the star?"}]
    structured = [messages[0], {"role": "user", "content": parts}, messages[2]]
    assert tok.apply_chat_template(structured, tokenize=False) == tok.apply_chat_template(
        messages, tokenize=False
    )


def test_assistant_mask_marks_answers_and_their_im_end(tok):
    messages = [
        {"role": "system", "content": "Answer in one word."},
        {"role": "user", "content": "<image>\nWhat color is the star?"},
        {"role": "assistant", "content": "red"},
        {"role": "user", "content": "How many shapes are there?"},
        {"role": "assistant", "content": "2"},
    ]
    out = tok.apply_chat_template(
        messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    ids, mask = out["input_ids"], out["assistant_masks"]
    assert len(ids) == len(mask)
    trained = [i for i, m in zip(ids, mask, strict=True) if m]
    assert tok.decode(trained) == f"red{IM_END}2{IM_END}"
    assert trained.count(tok.im_end_token_id) == 2
    # the newline after an answer's <|im_end|> and everything the user or system wrote stay untrained
    assert (
        sum(mask)
        == len(tok("red", add_special_tokens=False)["input_ids"])
        + len(tok("2", add_special_tokens=False)["input_ids"])
        + 2
    )


def test_assistant_mask_on_dataset_records(dataset, tok):
    for r in load_split(dataset[0], "eval")[:40]:
        out = tok.apply_chat_template(
            _messages(r), tokenize=True, return_dict=True, return_assistant_tokens_mask=True
        )
        trained = [i for i, m in zip(out["input_ids"], out["assistant_masks"], strict=True) if m]
        assert tok.decode(trained) == r["conversations"][1]["value"] + IM_END
        assert out["input_ids"].count(tok.image_token_id) == 1


def test_saved_files_name_the_specials(tokenizer_dir):
    config = json.loads((tokenizer_dir / "tokenizer_config.json").read_text())
    assert config["eos_token"] == "<|endoftext|>"
    assert config["image_token"] == IMAGE_TOKEN


def test_training_is_deterministic(dataset, tmp_path):
    texts = [t["value"] for r in load_split(dataset[0], "train") for t in r["conversations"]]
    train_tokenizer(texts, tmp_path / "a")
    train_tokenizer(texts, tmp_path / "b")
    assert (tmp_path / "a" / "tokenizer.json").read_bytes() == (
        tmp_path / "b" / "tokenizer.json"
    ).read_bytes()
    train_tokenizer(texts[::-1][: len(texts) // 3], tmp_path / "c")
    assert (tmp_path / "a" / "tokenizer.json").read_bytes() != (
        tmp_path / "c" / "tokenizer.json"
    ).read_bytes()
