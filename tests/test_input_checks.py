"""Values the user gives: out-of-range numbers, seeds, thread counts, options another model
kind would ignore, a recipe with a byte order mark. Each is refused in one paragraph that
names the field (exit status 2, no traceback, no run directory left behind) or accepted where
it is used.
"""

import pytest
import torch

from pyro_vae.cli import main
from pyro_vae.config import Config

from helpers import QUICK_TRAIN, run_cli


@pytest.mark.parametrize("argv,field", [
    (["--epochs", "0"], "epochs"), (["--batch-size", "0"], "batch_size"),
    (["--latent-dim", "-2"], "latent_dim"), (["--particles", "0"], "particles"),
    (["--lr", "0"], "learning_rate"), (["--lr", "-0.1"], "learning_rate"),
    (["--beta", "0"], "beta"), (["--objective", "renyi", "--alpha", "1"], "alpha"),
    (["--eval-samples", "0"], "num_samples"), (["--kl-warmup-epochs", "-1"], "kl_warmup"),
])
def test_out_of_range_values_name_the_field(tmp_path, capsys, argv, field):
    code = main(["train", *argv, "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and field in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("argv,needle", [
    (["train", "--seed", "5000000000"], "2**32"),
    (["compare", "--repeats", "1"], "at least 2"),
])
def test_more_bad_flags(tmp_path, capsys, argv, needle):
    assert main([*argv, "--out", str(tmp_path / "o")]) == 2
    assert needle in capsys.readouterr().err


# --- smaller cases -----------------------------------------------------------------------------

@pytest.mark.parametrize("argv,needle", [
    (["compare", "--alpha", "nan", "--objectives", "renyi"], "finite"),
    (["gaps", "RUN", "--lr", "inf"], "finite positive"),
    (["impute", "RUN", "--fraction", "0.001"], "hides no pixel"),
    (["traverse", "RUN", "--out", "x.txt"], "ending in .png"),
    (["train", "--beta", "1e-320", "--kl-warmup-epochs", "1000"], "below 1e-10"),
])
@pytest.mark.slow
def test_more_bad_values(trained, tmp_path, capsys, argv, needle):
    names = {"RUN": str(trained["vae"]), "x.txt": str(tmp_path / "x.txt")}
    argv = [names.get(a, a) for a in argv]
    if argv[0] in ("compare", "train"):
        argv += ["--out", str(tmp_path / "o")]
    code, _, err = run_cli(capsys, *argv)
    assert code == 2 and needle in err
    assert not (tmp_path / "o").exists() and not (tmp_path / "x.txt").exists()


def test_a_recipe_with_a_byte_order_mark(tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_bytes("\ufeff[model]\nlatent_dim = 3\n".encode("utf-8"))
    assert Config.from_toml(recipe).model.latent_dim == 3


# --- options that a kind or schedule would ignore -------------------------------------------------

@pytest.mark.parametrize("kind,section,key,value,needle", [
    ("vae", "train", "aux_loss_weight", 5.0,
     "[train] aux_loss_weight is the option 'aux_loss_weight' of kind = \"m2\""),
    ("cvae", "train", "m2_schedule", "interleaved", "m2_schedule is the option 'm2_schedule' of "
                                                    "kind = \"m2\", which this recipe does not use"),
    ("vae", "train", "labelled_every", 3, "labelled_every is the option 'labelled_every' of kind"),
    ("m2", "train", "labelled_every", 3, "only used with m2_schedule = \"interleaved\""),
    ("m2", "kind", "labelled_every", 3, "only used with m2_schedule = \"interleaved\""),
    ("vae", "model", "decoder_label", "input",
     "decoder_label is the option 'decoder_label' of kind = \"cvae\" or kind = \"m2\""),
    ("quadrant_cvae", "kind", "decoder_label", "input",
     "[kind] decoder_label is not an option of the kind 'quadrant_cvae'"),
    ("vae", "evaluate", "label_fidelity_samples", 50, "label_fidelity_samples is only used"),
])
def test_an_option_another_kind_would_ignore_is_refused(tmp_path, capsys, kind, section, key,
                                                        value, needle):
    recipe = tmp_path / "r.toml"
    quoted = f'"{value}"' if isinstance(value, str) else value
    recipe.write_text(f'[model]\nkind = "{kind}"\n[{section}]\n{key} = {quoted}\n'
                      .replace(f"[model]\nkind = \"{kind}\"\n[model]\n",
                               f"[model]\nkind = \"{kind}\"\n"))
    code, _, err = run_cli(capsys, "train", recipe, *QUICK_TRAIN, "--out", tmp_path / "run")
    assert code == 2 and needle in err and not (tmp_path / "run").exists()


def test_the_options_are_accepted_where_they_are_used():
    Config().with_overrides({"model": {"kind": "m2", "decoder_label": "input"},
                             "train": {"m2_schedule": "interleaved", "labelled_every": 3,
                                       "aux_loss_weight": 5.0}})
    Config().with_overrides({"model": {"kind": "cvae", "decoder_label": "input"}})


def test_switching_kind_drops_the_old_kinds_own_defaults():
    """`pyro-vae train digits_cvae --model vae` trained a VAE with a mixture prior that came
    from the cvae's default, not from the recipe."""
    cvae = Config.from_dict({"model": {"kind": "cvae"}})
    assert cvae.model.prior == "mixture"
    assert cvae.with_overrides({"model": {"kind": "vae"}}).model.prior == "normal"
    assert cvae.with_overrides({"model": {"kind": "m2"}}).model.prior == "normal"
    asked = cvae.with_overrides({"model": {"kind": "vae", "prior": "vamp"}})
    assert asked.model.prior == "vamp"
    vamp = Config.from_dict({"model": {"kind": "cvae", "prior": "vamp"}})
    assert vamp.with_overrides({"model": {"kind": "m2"}}).model.prior == "vamp"
    back = Config().with_overrides({"model": {"kind": "cvae"}})
    assert back.model.prior == "mixture"


@pytest.mark.parametrize("command", ["sample", "compare", "gaps"])
@pytest.mark.parametrize("seed", [-5, 2 ** 70])
def test_a_seed_out_of_range_is_refused(tmp_path, capsys, command, seed):
    """torch and NumPy raised ValueError tracebacks for these."""
    code, _, err = run_cli(capsys, command, tmp_path / "no-run", "--seed", seed)
    assert code == 2 and "--seed" in err and "[0, 2**32)" in err


def test_a_thread_count_beyond_reason_is_refused(tmp_path, capsys, monkeypatch):
    """torch.set_num_threads overflowed with a traceback; an absurd $OMP_NUM_THREADS falls
    back to one thread like any unusable value."""
    from pyro_vae.cli import apply_threads
    code, _, err = run_cli(capsys, "train", "--threads", 10 ** 11, "--out", tmp_path / "run")
    assert code == 2 and "--threads" in err and not (tmp_path / "run").exists()
    before = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", str(10 ** 14))
    try:
        assert apply_threads(None) == 1
    finally:
        torch.set_num_threads(before)
