"""The graded exercises (notebooks/exercises/): every solution notebook passes its graders when
executed, the exercise notebooks are the solutions with the TODO cells left open, and every
grader rejects a typical wrong answer with a message that says what is wrong.

An instructor runs the notebook part on students' work by pointing ``PYRO_VAE_EXERCISES`` at a
folder of their notebooks (see docs/source/guide/exercises.md)::

    PYRO_VAE_EXERCISES=submissions/alice pytest tests/test_exercises.py -k executes
"""

from __future__ import annotations

import math
import os
import shutil
import sys
from pathlib import Path

import nbformat
import pytest
import torch
from torch.distributions import Normal

from pyro_vae import grading, registry
from pyro_vae.grading.result import METADATA_KEY

EXERCISES = Path(__file__).resolve().parent.parent / "notebooks" / "exercises"
SOLUTIONS = EXERCISES / "solutions"
NAMES = sorted(path.name for path in EXERCISES.glob("*.ipynb"))
#: The notebooks whose graders must all pass: the solutions, or a student's folder.
GRADED = Path(os.environ.get("PYRO_VAE_EXERCISES", SOLUTIONS))


@pytest.fixture(autouse=True)
def _one_thread():
    """The graders work on tensors of a few hundred numbers: with two threads on a busy machine
    they wait on each other far longer than they compute."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _tags(cell) -> list[str]:
    return cell.get("metadata", {}).get("tags", [])


def _solution_namespace(name: str) -> dict:
    """The solution notebook's functions: its code cells run in order, up to its last grader
    cell (graders and the demonstrations after them left out)."""
    notebook = nbformat.read(SOLUTIONS / name, as_version=4)
    cells = [c for c in notebook.cells if c.cell_type == "code"]
    last = max(i for i, c in enumerate(cells) if "grader" in _tags(c))
    namespace: dict = {}
    for cell in cells[:last]:
        if "grader" not in _tags(cell):
            exec(compile(cell.source, f"<{name}>", "exec"), namespace)
    return namespace


# ------------------------------------------------------------------- the notebooks themselves

def test_there_are_five_exercises_each_with_its_solution():
    assert len(NAMES) >= 5
    assert sorted(path.name for path in SOLUTIONS.glob("*.ipynb")) == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_the_exercise_is_its_solution_with_the_todo_cells_open(name):
    exercise = nbformat.read(EXERCISES / name, as_version=4)
    solution = nbformat.read(SOLUTIONS / name, as_version=4)
    assert len(exercise.cells) == len(solution.cells)
    todo = 0
    for mine, theirs in zip(exercise.cells, solution.cells):
        if "exercise" in _tags(mine):
            todo += 1
            assert _tags(theirs) == ["solution"]
            assert "TODO" in mine.source and "raise NotImplementedError" in mine.source
            assert "raise NotImplementedError" not in theirs.source
        else:
            assert mine.source == theirs.source and _tags(mine) == _tags(theirs)
    graders = [c for c in exercise.cells if "grader" in _tags(c)]
    assert todo >= 1 and len(graders) >= 1
    for notebook in (exercise, solution):
        for cell in notebook.cells:
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, name


@pytest.mark.parametrize("name", NAMES)
def test_the_notebook_states_its_lesson_and_derives_in_latex(name):
    notebook = nbformat.read(EXERCISES / name, as_version=4)
    top = notebook.cells[0].source
    for heading in ("What this teaches", "Time", "What you should observe"):
        assert heading in top, (name, heading)
    markdown = "\n".join(c.source for c in notebook.cells if c.cell_type == "markdown")
    assert markdown.count("$$") >= 4, name


def _graded_notebooks() -> list[Path]:
    return sorted(GRADED.glob("*.ipynb"))


def test_there_are_notebooks_to_grade():
    """An empty or mistyped PYRO_VAE_EXERCISES folder fails here instead of grading nothing."""
    assert len(_graded_notebooks()) >= 5 or os.environ.get("PYRO_VAE_EXERCISES"), GRADED
    assert _graded_notebooks(), f"no notebooks in {GRADED}"


@pytest.mark.slow
@pytest.mark.parametrize("path", _graded_notebooks(), ids=lambda p: p.stem)
def test_the_notebook_executes_and_its_graders_pass(path, tmp_path, monkeypatch):
    """Run in a copy (exercise 4 writes its plugin module beside the notebook)."""
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    copy = tmp_path / path.name
    shutil.copy(path, copy)
    grade = grading.grade_notebook(copy)
    graders = [c for c in nbformat.read(path, as_version=4).cells if "grader" in _tags(c)]
    assert grade.errors == [], str(grade)
    assert len(grade.results) == len(graders) and grade.passed, str(grade)


@pytest.mark.slow
def test_an_unfilled_exercise_is_graded_as_not_written(tmp_path, monkeypatch):
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    copy = tmp_path / "02_gaussian_kl.ipynb"
    shutil.copy(EXERCISES / copy.name, copy)
    grade = grading.grade_notebook(copy)
    assert len(grade.results) == 2 and not grade.passed
    for result in grade.results:
        assert "not written yet" in result.feedback and "NotImplementedError" in result.feedback
    assert "FAILED (0/2 graders passed)" in str(grade)


def test_the_notebooks_extra_installs_jupyter_and_keeps_its_old_name():
    import configparser

    config = configparser.ConfigParser()
    config.read(EXERCISES.parent.parent / "setup.cfg")
    extras = config["options.extras_require"]
    wanted = {"jupyterlab", "ipykernel", "ipywidgets", "nbclient"}
    assert set(extras["notebooks"].split()) == wanted
    assert set(extras["notebook"].split()) == wanted


def test_grading_a_missing_notebook_says_so(tmp_path):
    from pyro_vae.errors import ConfigError

    with pytest.raises(ConfigError, match="no notebook at"):
        grading.grade_notebook(tmp_path / "absent.ipynb")


# ----------------------------------------------------------- the solutions pass, in process

def test_the_solutions_pass_every_grader_in_process():
    elbo = _solution_namespace("01_elbo_by_hand.ipynb")
    kl = _solution_namespace("02_gaussian_kl.ipynb")
    iwae = _solution_namespace("03_iwae_bound.ipynb")
    results = [grading.check_log_normal(elbo["log_normal"]),
               grading.check_elbo(elbo["elbo_estimate"]),
               grading.check_gaussian_kl(kl["gaussian_kl"]),
               grading.check_kl_between_gaussians(kl["kl_between_gaussians"]),
               grading.check_log_mean_exp(iwae["log_mean_exp"]),
               grading.check_iwae_bound(iwae["iwae_bound"])]
    for result in results:
        assert result.passed, str(result)


def test_a_result_reads_as_a_verdict_and_carries_its_checks():
    result = grading.check_gaussian_kl(_solution_namespace("02_gaussian_kl.ipynb")["gaussian_kl"])
    text = repr(result)
    assert text == str(result) and text.startswith("Exercise 2a") and "PASSED" in text
    assert "✓ value" in text and bool(result) and result.feedback == ""
    data, metadata = result._repr_mimebundle_()
    assert data["text/plain"] == text
    assert metadata[METADATA_KEY]["passed"] and len(metadata[METADATA_KEY]["checks"]) == 3


def test_a_grader_leaves_the_global_random_state_alone():
    elbo_estimate = _solution_namespace("01_elbo_by_hand.ipynb")["elbo_estimate"]
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    grading.check_elbo(elbo_estimate)
    assert torch.equal(torch.rand(3), expected)


# ------------------------------------------- typical wrong answers, rejected in words: ELBO

def _log_normal(x, loc, scale):
    return (-0.5 * math.log(2 * math.pi) - scale.log() - (x - loc) ** 2 / (2 * scale ** 2)).sum(-1)


def _elbo(kl_weight=1.0, detach=False, batch_mean=False, constant=True):
    def elbo_estimate(x, encoder, decoder, sigma, num_samples):
        loc, scale = encoder(x)
        z = loc + scale * torch.randn(num_samples, *loc.shape)
        z = z.detach() if detach else z
        log_lik = _log_normal(x, decoder(z), torch.full_like(x, sigma))
        if not constant:
            log_lik = log_lik + 0.5 * x.shape[-1] * math.log(2 * math.pi)
        kl = _log_normal(z, loc, scale) - _log_normal(z, torch.zeros_like(z), torch.ones_like(z))
        value = (log_lik - kl_weight * kl).mean(0)
        return value.mean() if batch_mean else value
    return elbo_estimate


def test_the_log_density_grader_names_a_missing_constant():
    result = grading.check_log_normal(
        lambda x, loc, scale: (-scale.log() - (x - loc) ** 2 / (2 * scale ** 2)).sum(-1))
    assert not result.passed and "off by the constant −D/2·log 2π" in result.feedback


def test_the_elbo_grader_accepts_the_right_answer_and_names_a_beta():
    assert grading.check_elbo(_elbo()).passed
    result = grading.check_elbo(_elbo(kl_weight=0.3))
    assert not result.passed and "KL term is weighted β ≈ 0.3" in result.feedback, result.feedback


def test_the_elbo_grader_names_a_missing_normalizer_and_a_batch_mean():
    result = grading.check_elbo(_elbo(constant=False))
    assert "off by the constant +P/2·log 2π" in result.feedback, result.feedback
    result = grading.check_elbo(_elbo(batch_mean=True))
    assert "shape []" in result.feedback and "one value per datapoint" in result.feedback


def test_the_elbo_grader_sees_a_sample_without_reparameterization():
    result = grading.check_elbo(_elbo(detach=True))
    assert [c.passed for c in result.checks] == [True, True, True, False]
    assert "no gradient reaches the encoder's mean through z" in result.feedback
    assert "reparameterization" in result.feedback


def test_a_student_function_that_raises_is_named_not_traced():
    def elbo_estimate(x, encoder, decoder, sigma, num_samples):
        raise NotImplementedError

    assert "not written yet" in grading.check_elbo(elbo_estimate).feedback

    def broken(x, encoder, decoder, sigma, num_samples):
        return encoder(x).loc  # a tuple has no .loc

    result = grading.check_elbo(broken)
    assert "your function raised AttributeError" in result.feedback
    assert "`return encoder(x).loc" in result.feedback


# ------------------------------------------------------------------------------------ KL

def test_the_kl_grader_names_a_swapped_log_variance_sign():
    result = grading.check_gaussian_kl(lambda mu, lv: 0.5 * (mu ** 2 + lv.exp() - 1 + lv).sum(-1))
    assert not result.passed
    assert "for q = N(1, 0.5²)" in result.feedback and "never negative" in result.feedback
    assert "swap the sign of the log-variance" in result.feedback


def test_the_kl_grader_names_a_missing_minus_one_and_a_per_dimension_answer():
    result = grading.check_gaussian_kl(lambda mu, lv: 0.5 * (mu ** 2 + lv.exp() - lv).sum(-1))
    assert "must be 0" in result.feedback and "−1 inside the sum is missing" in result.feedback
    result = grading.check_gaussian_kl(lambda mu, lv: 0.5 * (mu ** 2 + lv.exp() - 1 - lv))
    assert "shape [6, 3]" in result.feedback and "sum over the last dimension" in result.feedback


def test_the_general_kl_grader_names_swapped_arguments():
    def kl(mu_q, logvar_q, mu_p, logvar_p):
        return 0.5 * (logvar_q - logvar_p + (logvar_p.exp() + (mu_q - mu_p) ** 2)
                      / logvar_q.exp() - 1).sum(-1)

    result = grading.check_kl_between_gaussians(kl)
    assert not result.passed and "you computed KL(p ‖ q)" in result.feedback


# ---------------------------------------------------------------------------------- IWAE

def _log_weights(x, encoder, decoder, sigma, num_particles):
    loc, scale = encoder(x)
    q = Normal(loc, scale)
    z = q.rsample((num_particles,))
    return (Normal(decoder(z), sigma).log_prob(x).sum(-1) + Normal(0.0, 1.0).log_prob(z).sum(-1)
            - q.log_prob(z).sum(-1))


def test_the_log_mean_exp_grader_names_the_mean_of_the_logs_and_an_overflow():
    result = grading.check_log_mean_exp(lambda values, dim=0: values.mean(dim))
    assert "mean of log" in result.feedback and "Jensen" in result.feedback
    result = grading.check_log_mean_exp(lambda values, dim=0: values.exp().mean(dim).log())
    assert [c.passed for c in result.checks] == [True, True, True, False]
    assert "not finite" in result.feedback and "underflows" in result.feedback


def test_the_iwae_grader_names_a_missing_one_over_k():
    result = grading.check_iwae_bound(
        lambda x, e, d, s, k: torch.logsumexp(_log_weights(x, e, d, s, k), 0))
    assert "left out the 1/K" in result.feedback and "L_16" in result.feedback


def test_the_iwae_grader_sees_a_bound_that_does_not_rise_with_k():
    result = grading.check_iwae_bound(lambda x, e, d, s, k: _log_weights(x, e, d, s, k).mean(0))
    failed = [c.name for c in result.failures]
    assert failed == ["rises with K"], str(result)
    assert "stays at the ELBO" in result.feedback and "not the mean" in result.feedback


# --------------------------------------------------------------------------------- prior

PRIOR_MODULE = '''
import pyro.distributions as dist
import torch
from torch import nn

from pyro_vae.priors import Prior
from pyro_vae.registry import PRIORS


class Learned(Prior):
    def __init__(self, latent_dim):
        super().__init__(latent_dim)
        self.loc = nn.Parameter(torch.zeros(latent_dim))
        self.raw_scale = nn.Parameter(torch.full((latent_dim,), 0.5413248546129181))

    def forward(self, batch_shape, device, dtype):
        shape = (*batch_shape, self.latent_dim)
        scale = SCALE
        return dist.Normal(self.loc.expand(shape), scale.expand(shape))EVENT


@PRIORS.register("NAME")
def build(config, context):
    return Learned(config.latent_dim)
'''


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """Write a prior plugin module and load it, with the registries restored afterwards."""
    monkeypatch.setattr(registry.PRIORS, "_entries", dict(registry.PRIORS._loaded()))
    monkeypatch.setattr(registry, "_loaded_plugins", list(registry._loaded_plugins))
    monkeypatch.syspath_prepend(str(tmp_path))

    def write(module, name, scale="nn.functional.softplus(self.raw_scale)",
              event=".to_event(1)", load=True):
        source = PRIOR_MODULE.replace("SCALE", scale).replace("EVENT", event)
        (tmp_path / f"{module}.py").write_text(source.replace("NAME", name))
        monkeypatch.delitem(sys.modules, module, raising=False)
        if load:
            registry.load_plugin(module)
        else:
            __import__(module)
        return name

    yield write


def test_the_prior_grader_accepts_a_learned_gaussian_plugin(plugin):
    result = grading.check_prior_plugin(plugin("exercise_prior_ok", "exercise_ok"))
    assert result.passed, str(result)
    assert "exact inside the model" in str(result)


def test_the_prior_grader_names_a_missing_to_event(plugin):
    result = grading.check_prior_plugin(plugin("exercise_prior_event", "exercise_event",
                                               event=""))
    assert "has [5, 3] and []" in result.feedback and ".to_event(1)" in result.feedback


def test_the_prior_grader_names_a_scale_that_can_go_negative(plugin):
    name = plugin("exercise_prior_raw", "exercise_raw", scale="self.raw_scale + 0.4586751")
    result = grading.check_prior_plugin(name)
    assert [c.name for c in result.failures] == ["scale stays positive"], str(result)
    assert "softplus or exp" in result.feedback


def test_the_prior_grader_wants_a_plugin_module_and_suggests_names(plugin):
    name = plugin("exercise_prior_plain", "exercise_plain", load=False)
    result = grading.check_prior_plugin(name)
    assert [c.name for c in result.failures] == ["registered"]
    assert "not by loading a plugin module" in result.feedback
    result = grading.check_prior_plugin("exercise_plian")
    assert "Did you mean 'exercise_plain'?" in result.feedback


# ------------------------------------------------------------------------ score function

def _surrogate(stop=True, baseline=None):
    def surrogate(x, encoder, decoder, sigma, num_samples):
        loc, scale = encoder(x)
        q = Normal(loc, scale)
        z = q.sample((num_samples,))
        log_q = q.log_prob(z).sum(-1)
        log_w = (Normal(decoder(z), sigma).log_prob(x).sum(-1)
                 + Normal(0.0, 1.0).log_prob(z).sum(-1) - log_q)
        b = 0.0 if baseline is None else baseline(log_w)
        factor = (log_w - b).detach() if stop else log_w - b
        return (log_w + factor * log_q).mean(0)
    return surrogate


def test_the_score_function_grader_accepts_the_right_answer_and_names_a_missing_stop():
    assert grading.check_score_function(_surrogate()).passed
    result = grading.check_score_function(_surrogate(stop=False))
    assert "stop-gradient is missing" in result.feedback and "entropy" in result.feedback


def test_the_baseline_grader_accepts_leave_one_out_and_names_a_baseline_with_itself():
    leave_one_out = _surrogate(baseline=lambda w: (w.sum(0, keepdim=True) - w) / (len(w) - 1))
    assert grading.check_score_function_baseline(leave_one_out).passed
    result = grading.check_score_function_baseline(
        _surrogate(baseline=lambda w: w.mean(0, keepdim=True)))
    assert "(K − 1)/K = 0.5 of the exact one" in result.feedback
    assert "other K − 1 draws" in result.feedback
