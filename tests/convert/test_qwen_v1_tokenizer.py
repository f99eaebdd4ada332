"""Qwen's tiktoken vocabulary as a fast tokenizer: the same ids as the real ``tiktoken`` package with Qwen's
pattern and special tokens, on mixed English / Chinese / code text."""

import random
import unicodedata

import pytest
import tiktoken
from qwen_v1_reference import CORPUS, PATTERN, SPECIALS

from fusevlm.models.qwen_v1 import (
    QWEN_SPECIAL_TOKENS,
    QWEN_VL_IMAGE_TOKENS,
    QwenV1ConversionError,
    qwen_tiktoken_tokenizer,
)

MIXED = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
    "The brown dog reads 图片 and 文本 — 模型的能力 🚀 ok? Returns 9876543210 items, 12345 and 123.<|im_end|>\n"
    "<|im_start|>assistant\ndef f(x):\n        return x**2  # 平方, not 立方\n\n\n   spaces   end\t\ttabs"
    "<|im_end|><|endoftext|><|extra_7|><|extra_204|> lazy foxes' they'LL WE'RE 我们的模型"
)


@pytest.fixture(scope="module")
def reference(qwen_ranks):
    return tiktoken.Encoding(
        "qwen-test",
        pat_str=PATTERN,
        mergeable_ranks=qwen_ranks,
        special_tokens={token: len(qwen_ranks) + i for i, token in enumerate(SPECIALS)},
    )


@pytest.fixture(scope="module")
def tokenizer(qwen_vocab_file):
    return qwen_tiktoken_tokenizer(qwen_vocab_file)


def test_mixed_text_with_special_tokens_has_tiktokens_ids(tokenizer, reference, qwen_ranks):
    expected = reference.encode(MIXED, allowed_special="all")
    assert tokenizer.encode(MIXED, add_special_tokens=False) == expected
    # Multi-byte merges are exercised: some tokens are whole Chinese characters or words, some bare bytes.
    pieces = [reference.decode_single_token_bytes(i) for i in expected if i < len(qwen_ranks)]
    assert any(len(p) >= 6 and p.decode("utf-8", "ignore") for p in pieces)  # e.g. 模型 (two 3-byte chars)
    assert any(len(p) == 1 and p[0] >= 0x80 for p in pieces)  # 🚀 or a rare character falls back to bytes
    assert tokenizer.decode(expected) == MIXED


def test_random_text_from_the_vocabularys_alphabet_has_tiktokens_ids(tokenizer, reference):
    rng = random.Random(0)
    alphabet = sorted(set(CORPUS)) + [" "] * 12 + ["\n", "\r\n", "\t", "é", "🚀", "0"] + SPECIALS[:4]
    for _ in range(400):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 50)))
        assert tokenizer.encode(text, add_special_tokens=False) == reference.encode(text, allowed_special="all"), text


def test_special_tokens_follow_the_ranks_and_are_skippable(tokenizer, qwen_ranks):
    assert list(QWEN_SPECIAL_TOKENS) == SPECIALS
    assert [tokenizer.convert_tokens_to_ids(t) for t in SPECIALS] == list(range(len(qwen_ranks), len(qwen_ranks) + 208))
    assert len(tokenizer) == len(qwen_ranks) + 208
    assert tokenizer.eos_token == tokenizer.pad_token == "<|endoftext|>"
    ids = tokenizer.encode("<|im_start|>user\nhi<|im_end|>", add_special_tokens=False)
    assert tokenizer.decode(ids, skip_special_tokens=True) == "user\nhi"


def test_text_is_nfc_normalised_first_as_qwens_tokenizer_does(tokenizer, reference):
    decomposed = "cafe\u0301 and 모델"  # e + combining acute; Hangul as jamo after NFD
    decomposed = unicodedata.normalize("NFD", decomposed)
    expected = reference.encode(unicodedata.normalize("NFC", decomposed))
    assert tokenizer.encode(decomposed, add_special_tokens=False) == expected
    assert expected != reference.encode(decomposed)


def test_qwen_vl_image_tokens_come_after_the_llm_ones(qwen_vocab_file, qwen_ranks):
    specials = SPECIALS + ["<ref>", "</ref>", "<box>", "</box>", "<quad>", "</quad>", "<img>", "</img>", "<imgpad>"]
    reference = tiktoken.Encoding(
        "qwen-vl-test", pat_str=PATTERN, mergeable_ranks=qwen_ranks,
        special_tokens={token: len(qwen_ranks) + i for i, token in enumerate(specials)},
    )
    tokenizer = qwen_tiktoken_tokenizer(qwen_vocab_file, QWEN_SPECIAL_TOKENS + QWEN_VL_IMAGE_TOKENS)
    text = "Picture 1: <img>demo.jpeg</img>\n<ref>the dog</ref><box>(12,34),(560,780)</box><|endoftext|>"
    assert tokenizer.encode(text, add_special_tokens=False) == reference.encode(text, allowed_special="all")


def test_a_bad_vocabulary_line_is_named(tmp_path, qwen_vocab_file):
    lines = qwen_vocab_file.read_text().splitlines()
    bad = tmp_path / "qwen.tiktoken"
    bad.write_text("\n".join(lines[:3] + ["not-base64!! 3"] + lines[4:]) + "\n")
    with pytest.raises(QwenV1ConversionError, match=r"qwen\.tiktoken:4: not a 'base64 rank' line"):
        qwen_tiktoken_tokenizer(bad)
    gap = tmp_path / "gap.tiktoken"
    gap.write_text("\n".join(lines[:5] + lines[6:]) + "\n")  # rank 5 missing
    with pytest.raises(QwenV1ConversionError, match="ranks are not 0"):
        qwen_tiktoken_tokenizer(gap)
