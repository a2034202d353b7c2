"""Every ```python block of README.md runs as written, in a fresh folder, in its own process.

The "Extending pyro-vae" blocks are run by ``test_readme_extending.py`` (they write modules that
later blocks import). Conventions the README's blocks follow, so that each is runnable alone:

* ``# after: pyro-vae ...`` lines at the top of a block are the shell commands that make what
  the block reads (a run directory); they are run first, in the same folder.
* a block starting with ``# continues the example above`` is run after the README's previous
  Python block, in one process.
"""

import os
import re
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
EXTENDING = "Extending pyro-vae"
CONTINUES = "# continues the example above"


def _blocks() -> list[tuple[str, str]]:
    """(section title, code) of every python block, in README order."""
    blocks, section = [], ""
    text = README.read_text(encoding="utf-8")
    pattern = r"^## ([^\n]+)$|^( *)```python\n(.*?)^\2```"
    for match in re.finditer(pattern, text, flags=re.M | re.S):
        if match.group(1) is not None:
            section = match.group(1).strip()
        else:
            blocks.append((section, textwrap.dedent(match.group(3))))
    return blocks


BLOCKS = _blocks()
CASES = [(i, section) for i, (section, _) in enumerate(BLOCKS) if section != EXTENDING]


def _program(index: int) -> str:
    code = BLOCKS[index][1]
    if code.startswith(CONTINUES):
        return _program(index - 1) + "\n" + code
    return code


def _run(command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("readme")


def test_the_readme_has_python_examples_outside_extending():
    assert len(BLOCKS) > len(CASES) >= 4  # objectives, Bayesian decoder, from Python, ArviZ


@pytest.mark.parametrize("index", [i for i, _ in CASES],
                         ids=[f"{i}-{section}" for i, section in CASES])
def test_a_readme_python_example_runs_as_written(index, folder):
    program = _program(index)
    for line in program.splitlines():
        if line.startswith("# after: pyro-vae "):
            arguments = shlex.split(line[len("# after: pyro-vae "):])
            done = _run([sys.executable, "-m", "pyro_vae", *arguments], folder)
            assert done.returncode == 0, (line, done.stderr[-2000:])
    result = _run([sys.executable, "-c", program], folder)
    assert result.returncode == 0, result.stderr[-3000:]
    if "print(" in program:  # it says something, and a log-likelihood it prints is one
        assert result.stdout.strip()
        for number in re.findall(r"^(-?\d+\.\d+) ±", result.stdout, flags=re.M):
            assert float(number) < 0
