import pytest

from fusevlm.data import synthetic
from fusevlm.data.tokenizer import train_tokenizer


@pytest.fixture(scope="session")
def dataset(tmp_path_factory):
    """One dataset for the read-only tests: big enough for balance checks, small enough to build in ~1 s."""
    out = tmp_path_factory.mktemp("synthetic")
    meta = synthetic.generate(out, num_train=320, num_eval=240, num_align=80, seed=3)
    return out, meta


@pytest.fixture(scope="session")
def tokenizer_dir(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("tokenizer")
    train_tokenizer(synthetic.training_texts(dataset[0]), out, vocab_size=512)
    return out
