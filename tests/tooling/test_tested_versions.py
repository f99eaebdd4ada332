"""`.ci/tested_versions.py`: the README block CI writes after a passing run."""

import importlib.util
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tested_versions():
    spec = importlib.util.spec_from_file_location("tested_versions", ROOT / ".ci" / "tested_versions.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_block_names_the_installed_releases_and_what_pyproject_asks(tested_versions):
    text = tested_versions.block({"dev", "deepspeed", "web"})
    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| ") and "---" not in line}
    # Versions as the packages themselves report them, not through importlib.metadata.
    assert f"| {torch.__version__} |" in rows["torch"]
    assert f"| {pytest.__version__} |" in rows["pytest (`dev`)"]
    assert "`>=2.4,<2.15`" in rows["torch"]
    assert "gradio (`web`)" in rows and "deepspeed (`deepspeed`)" in rows
    # an extra the run did not install is named, not listed with whatever happens to be on the machine
    assert not any("(`serve`)" in name for name in rows)
    assert "not tested here: `serve`" in text


def test_update_replaces_only_the_marked_block(tested_versions, tmp_path):
    before, after = "# title\n\nintro\n\n", "\n\n## next\nrest\n"
    readme = tmp_path / "README.md"
    readme.write_text(before + tested_versions.BEGIN + "\nold table\n" + tested_versions.END + after)
    assert tested_versions.update(readme, tested_versions.BEGIN + "\nnew table\n" + tested_versions.END)
    assert readme.read_text() == before + tested_versions.BEGIN + "\nnew table\n" + tested_versions.END + after
    assert not tested_versions.update(readme, tested_versions.BEGIN + "\nnew table\n" + tested_versions.END)


def test_update_refuses_a_readme_without_the_block(tested_versions, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# no block here\n")
    with pytest.raises(SystemExit, match="no tested-versions block"):
        tested_versions.update(readme, "x")
    assert readme.read_text() == "# no block here\n"


def test_the_readme_holds_the_block():
    text = (ROOT / "README.md").read_text()
    assert "<!-- tested-versions:begin" in text and "<!-- tested-versions:end -->" in text
