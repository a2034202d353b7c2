"""The walk-through of docs/source/guide/extending.md runs as written: a Student-t prior whose
df a recipe sets, a hierarchical prior with a global hyperprior, a plain-Pyro model trained
by fit, every command on each, and the testing kit catching a broken prior."""

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

PAGE = Path(__file__).resolve().parents[1] / "docs" / "source" / "guide" / "extending.md"


@pytest.mark.slow  # three trainings and eighteen commands, each in a process of its own
def test_the_walk_through_runs_as_written(tmp_path):
    blocks = re.findall(r"```python\n(.*?)```", PAGE.read_text(encoding="utf-8"), flags=re.S)
    script = []
    for block in blocks:
        first = block.splitlines()[0]
        if first.startswith("# ") and first.endswith(".py"):  # a module to save
            (tmp_path / first[2:]).write_text(block)
        else:
            script.append(block)
    assert len(script) == 5 and len(blocks) == 9
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", "\n".join(script)], cwd=tmp_path, env=env,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    # The recipe's [prior] df, overridden by --set, reached the run's record.
    config = tomllib.loads((tmp_path / "runs" / "student" / "config.toml").read_text())
    assert config["prior"] == {"df": 7.0}
    assert "no event dimension" in result.stdout  # the kit named the broken prior
    assert "nan" not in result.stdout.lower()
    for run in ("student", "hyperprior", "plain"):
        folder = tmp_path / "runs" / run
        assert (folder / "samples-16.png").exists() and (folder / "traversals.png").exists()
        assert (folder / "compare" / "compare.csv").exists()
        assert (folder / "gaps.json").exists()
    compared = (tmp_path / "runs" / "hyperprior" / "compare" / "compare.json").read_text()
    assert '"not_measured"' in compared and '"iwae"' in compared
