"""The documentation site builds with warnings as errors and has the pages it promises.

Runs ``sphinx-build -W -b html docs/source OUT`` (offline, notebooks not executed) into a
temporary folder: a broken link between pages, a missing image, a bad docstring or a page
left out of every table of contents fails it.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_docs_build_with_warnings_as_errors(tmp_path):
    out = tmp_path / "html"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "sphinx", "-W", "-q", "-b", "html",
                           "-d", str(tmp_path / "doctrees"), str(ROOT / "docs" / "source"),
                           str(out)], cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-4000:]
    api = out / "api" / "generated"
    for module in ("pyro_vae.registry", "pyro_vae.protocol", "pyro_vae.objectives"):
        page = api / f"{module}.html"
        assert page.exists(), f"no API page for {module}"
        assert f'id="module-{module}"' in page.read_text(encoding="utf-8")
    notebooks = sorted(path.stem for path in (ROOT / "notebooks").glob("*.ipynb"))
    assert notebooks
    for name in notebooks:
        assert (out / "tutorials" / "notebooks" / f"{name}.html").exists(), name
    # Rendered with the outputs of their last full-size run (notebooks/executed/): what the
    # training printed and its pictures.
    page = (out / "tutorials" / "notebooks" / "02_training_a_vae.html").read_text(
        encoding="utf-8")
    assert "active units" in page and "<img" in page
    for page in ("guide/quickstart", "guide/extending_components", "benchmarks/results",
                 "changelog", "development/contributing"):
        assert (out / f"{page}.html").exists(), page
    rendered = (out / "benchmarks" / "iwae_table1.html").read_text(encoding="utf-8")
    assert "benchmarks/results/iwae_curve.json" in rendered  # tables come from result files
