import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import tiny  # noqa: E402


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory):
    """Tiny checkpoint folders, built once per session and loaded by path like real ones."""
    root = tmp_path_factory.mktemp("checkpoints")
    cache: dict[str, Path] = {}

    def get(kind: str, name: str, **kwargs) -> Path:
        key = f"{kind}-{name}-" + "-".join(f"{k}{v}" for k, v in sorted(kwargs.items()))
        if key not in cache:
            maker = tiny.make_llm if kind == "llm" else tiny.make_vision
            cache[key] = maker(root / key, name, **kwargs)
        return cache[key]

    return get


@pytest.fixture(autouse=True, scope="session")
def _data_cache(tmp_path_factory):
    """Tokenized-dataset caches go to a folder of this session (runs started by tests inherit it)."""
    import os

    before = os.environ.get("FUSEVLM_CACHE")
    os.environ["FUSEVLM_CACHE"] = str(tmp_path_factory.mktemp("fusevlm-cache"))
    yield
    if before is None:
        os.environ.pop("FUSEVLM_CACHE", None)
    else:
        os.environ["FUSEVLM_CACHE"] = before
