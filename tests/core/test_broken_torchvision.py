"""A torchvision built for another torch (what installing lmms-eval beside a CPU torch leaves) must not break fusevlm.

The stand-in fails at import exactly as PyPI's CUDA torchvision does beside the CPU torch; transformers alone
breaks on it (the first subprocess proves the trap is real), fusevlm warns and works.
"""

import os
import subprocess
import sys
import textwrap


def run(code: str, path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(path), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env,
                          timeout=300)


def test_a_torchvision_that_does_not_import_leaves_fusevlm_working(tmp_path):
    (tmp_path / "torchvision").mkdir()
    (tmp_path / "torchvision" / "__init__.py").write_text(
        'raise RuntimeError("operator torchvision::nms does not exist")\n')
    info = tmp_path / "torchvision-0.28.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: torchvision\nVersion: 0.28.0\n")

    trap = run("from transformers import PreTrainedModel", tmp_path)
    assert trap.returncode != 0 and "torchvision::nms" in trap.stderr + trap.stdout

    works = run("""
        import fusevlm
        from transformers import PreTrainedModel
        from transformers.utils import is_torchvision_available
        assert not is_torchvision_available()
        print("ok")
    """, tmp_path)
    assert works.returncode == 0, works.stderr[-3000:]
    assert works.stdout.strip().endswith("ok")
    assert "torchvision is installed but does not import (operator torchvision::nms does not exist)" in works.stderr
