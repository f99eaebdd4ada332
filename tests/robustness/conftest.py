import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """These tests are about behaviour, not speed: one intra-op thread keeps them fast on a shared 2-core machine
    (two threads contending with other processes were 15x slower) and subprocesses (OMP_NUM_THREADS=1) alike."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def parts(checkpoints):
    """The tiny vision tower and LLM folders every robustness run composes (loaded by path, like real ones)."""
    return {"vision": str(checkpoints("vision", "clip", hidden=32)), "llm": str(checkpoints("llm", "llama"))}


@pytest.fixture(scope="session")
def model_dir(parts, tmp_path_factory):
    """A composed, untrained tiny fusevlm folder (16 image tokens) for serving and loading tests."""
    import torch

    from fusevlm import build_vlm

    torch.manual_seed(0)
    model, processor = build_vlm(parts["vision"], "mlp2x_gelu", parts["llm"])
    folder = tmp_path_factory.mktemp("robust-model") / "tiny-vlm"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
