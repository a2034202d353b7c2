"""The "Extending pyro-vae" examples (a prior, a guide, a model) run as written.

They moved from the README to the user guide's page docs/source/guide/extending_components.md."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

PAGE = Path(__file__).resolve().parents[1] / "docs" / "source" / "guide" / "extending_components.md"


def _examples() -> list[str]:
    text = PAGE.read_text(encoding="utf-8")
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


@pytest.mark.slow
def test_the_extending_examples_run_as_written(tmp_path):
    blocks = _examples()
    assert len(blocks) == 4  # prior, guide, the model's module, training it
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "OMP_NUM_THREADS": "1"}
    for block in blocks:
        first = block.splitlines()[0]
        if first.startswith("# ") and first.endswith(".py"):  # a module the next block imports
            (tmp_path / first[2:]).write_text(block)
            continue
        result = subprocess.run([sys.executable, "-c", block], cwd=tmp_path, env=env,
                                capture_output=True, text=True)
        assert result.returncode == 0, result.stderr[-2000:]
        value = float(result.stdout.strip().split("log p(x):")[-1])
        assert value < 0  # a log-likelihood of binary 8x8 images
    assert {p.name for p in (tmp_path / "runs").iterdir()} == {"laplace-prior",
                                                               "student-t-guide", "ppca"}
    # A run's factory module is imported only when the user trusts it with --plugin (a run
    # directory may come from anyone): without the flag, the refusal gives the command.
    command = [sys.executable, "-m", "pyro_vae", "evaluate", "runs/ppca", "--num-samples", "10"]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "pyro-vae evaluate runs/ppca --num-samples 10 --plugin mymodels" in result.stderr
    result = subprocess.run([*command, "--plugin", "mymodels"], cwd=tmp_path, env=env,
                            capture_output=True, text=True)
    assert result.returncode == 0 and "log p(x)" in result.stdout, result.stderr[-2000:]
