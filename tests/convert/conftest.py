import pytest
from qwen_v1_reference import CORPUS, train_byte_bpe, write_tiktoken


@pytest.fixture(scope="session")
def qwen_ranks() -> dict[bytes, int]:
    """A byte-level BPE vocabulary trained on mixed English / Chinese / code text (a few hundred merges), plus
    multi-digit tokens that Qwen's digit-by-digit split never uses (a tokenizer splitting digits otherwise would)."""
    ranks = train_byte_bpe(CORPUS, 400)
    for token in (b"12", b"123"):
        ranks.setdefault(token, len(ranks))
    return ranks


@pytest.fixture(scope="session")
def qwen_vocab_file(qwen_ranks, tmp_path_factory):
    return write_tiktoken(tmp_path_factory.mktemp("qwen-vocab") / "qwen.tiktoken", qwen_ranks)
