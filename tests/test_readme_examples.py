"""Every ```python block of README.md and of the user guide's pages that hold its former
sections (docs/source/guide/, ``MOVED``) runs as written, in a fresh folder, in its own process.

The "Extending pyro-vae" page's blocks are run by ``test_readme_extending.py`` (they write
modules that later blocks import). Conventions the blocks follow, so that each is runnable alone:

* ``# after: pyro-vae ...`` lines at the top of a block are the shell commands that make what
  the block reads (a run directory); they are run first, in the same folder.
* a block starting with ``# continues the example above`` is run after the previous Python
  block of the same page, in one process.
"""

import os
import re
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
GUIDE = ROOT / "docs" / "source" / "guide"
EXTENDING = GUIDE / "extending_components.md"  # run by test_readme_extending.py
CONTINUES = "# continues the example above"


#: The guide pages that hold the README's former sections (other pages test their own examples).
MOVED = ("quickstart", "install", "train", "setup", "objectives", "priors_guides", "evaluation",
         "applications", "diagnostics", "discrete", "conditional", "quadrants", "semisupervised",
         "speed", "reliability")


def _pages() -> list[Path]:
    return [README] + [GUIDE / f"{name}.md" for name in MOVED]


def _blocks() -> list[tuple[str, str, str]]:
    """(page, section title, code) of every python block, page by page, in page order."""
    blocks = []
    for page in _pages():
        section, name = "", page.relative_to(ROOT).as_posix()
        text = page.read_text(encoding="utf-8")
        pattern = r"^#{1,3} ([^\n]+)$|^( *)```python\n(.*?)^\2```"
        for match in re.finditer(pattern, text, flags=re.M | re.S):
            if match.group(1) is not None:
                section = match.group(1).strip()
            else:
                blocks.append((name, section, textwrap.dedent(match.group(3))))
    return blocks


BLOCKS = _blocks()
#: A guide page may repeat a README example (the docs stand alone); each code runs once.
CASES = [(i, f"{page}: {section}") for i, (page, section, code) in enumerate(BLOCKS)
         if all(code != other for _, _, other in BLOCKS[:i])]


def _program(index: int) -> str:
    code = BLOCKS[index][2]
    if code.startswith(CONTINUES):
        assert index > 0 and BLOCKS[index - 1][0] == BLOCKS[index][0], "continues no block"
        return _program(index - 1) + "\n" + code
    return code


def _run(command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("readme")


def test_the_readme_and_the_guide_have_python_examples_outside_extending():
    pages = {page for page, _, _ in BLOCKS}
    assert "README.md" in pages  # the README's "From Python"
    assert len(CASES) >= 4  # objectives, Bayesian decoder, from Python, ArviZ


@pytest.mark.parametrize("index", [i for i, _ in CASES],
                         ids=[f"{i}-{section}" for i, section in CASES])
@pytest.mark.slow
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
