"""A run directory or a checkpoint someone sends you executes nothing, downloads nothing and
writes nothing outside the run: each kind of malicious run below is refused with exit status 2
and one paragraph (no traceback), and the payload's marker file is never written.

Code only runs with the user's consent: ``--plugin MODULE`` (the refusal gives the exact command
line), an installed package's entry point, or a call in Python. The commands that could import
something run in a fresh process (``python -m pyro_vae``, which also puts the working folder on
``sys.path``, the way a payload shipped inside a run directory would be found)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import run_cli
from pyro_vae.errors import ConfigError
from pyro_vae.registry import import_object, load_plugin, untrusted

#: A module whose import (or whose factory's call) leaves a marker file: the proof that code ran.
PAYLOAD = """import os
open(os.environ["PAYLOAD_MARKER"], "w").write("ran on import")


def build(config, image_shape, num_data=None):
    open(os.environ["PAYLOAD_MARKER"], "w").write("ran when called")
    raise SystemExit(0)
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A finished one-epoch digits run, copied by each test before it is tampered with."""
    run = tmp_path_factory.mktemp("trained") / "run"
    code = run_cli_plain("train", "--epochs", 1, "--eval-samples", 2, "--out", run)
    assert code == 0
    return run


def run_cli_plain(*argv) -> int:
    from pyro_vae.cli import main
    return main([str(a) for a in argv])


@pytest.fixture
def attack(tmp_path, trained):
    """(folder, RUN, marker, environment): a copy of the run in ``folder/RUN``, a payload module
    ``marker_plugin`` on the PYTHONPATH and a payload ``RUN/payload.py`` inside the run."""
    run = tmp_path / "RUN"
    shutil.copytree(trained, run)
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "marker_plugin.py").write_text(PAYLOAD)
    (run / "payload.py").write_text(PAYLOAD)
    marker = tmp_path / "marker"
    env = {**os.environ, "PAYLOAD_MARKER": str(marker), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(tmp_path / "site")}
    return tmp_path, run, marker, env


def pyro_vae(argv, cwd, env, timeout=300) -> tuple[int, str]:
    """``python -m pyro_vae ARGV`` in a fresh process: (exit status, stderr)."""
    result = subprocess.run([sys.executable, "-m", "pyro_vae", *map(str, argv)], cwd=cwd,
                            env=env, capture_output=True, text=True, timeout=timeout)
    return result.returncode, result.stderr


def refused(code: int, err: str) -> str:
    """The one error paragraph of a refused command (exit 2, no traceback)."""
    errors = [line for line in err.splitlines() if line.startswith("pyro-vae: error:")]
    assert code == 2 and "Traceback" not in err and len(errors) == 1, err[-3000:]
    return errors[0]


def set_config(run: Path, old: str, new: str) -> None:
    path = run / "config.toml"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


@pytest.mark.slow
@pytest.mark.parametrize("command", [["evaluate", "RUN", "--num-samples", 2],
                                     ["sample", "RUN", "--n", 4, "--out", "s.npz"],
                                     ["train", "--out", "RUN", "--resume", "--epochs", 2]])
def test_a_runs_plugin_list_imports_nothing(attack, command):
    folder, run, marker, env = attack
    set_config(run, "[data]", 'plugins = ["marker_plugin"]\n\n[data]')
    message = refused(*pyro_vae(command, folder, env))
    assert not marker.exists()
    assert "marker_plugin" in message and "never imports" in message
    # The refusal ends with the exact command that trusts the plugin; run as given, the user's
    # consent imports it.
    trusting = message.split("The command that trusts it: pyro-vae ", 1)[1].split()
    assert trusting[-2:] == ["--plugin", "marker_plugin"]
    if command[0] == "evaluate":
        code, err = pyro_vae(trusting, folder, env)
        assert code == 0, err[-2000:]
        assert marker.read_text() == "ran on import"


@pytest.mark.slow
@pytest.mark.parametrize("setting", ['plugins = ["RUN.payload"]\n\n[data]',
                                     'kind = "RUN.payload:build"'])
def test_code_shipped_inside_the_run_directory_never_runs(attack, setting):
    folder, run, marker, env = attack
    old = "[data]" if setting.startswith("plugins") else 'kind = "vae"'
    set_config(run, old, setting)
    refused(*pyro_vae(["evaluate", "RUN", "--num-samples", 2], folder, env))
    refused(*pyro_vae(["sample", "RUN", "--n", 4, "--out", "s.npz"], folder,
                      {**env, "PYTHONPATH": "."}))
    assert not marker.exists() and not (folder / "s.npz").exists()


@pytest.mark.slow
@pytest.mark.parametrize("change", [{"plugins": ["marker_plugin"]},
                                    {"model": "marker_plugin:build"}])
def test_the_configuration_saved_in_a_checkpoint_imports_nothing(attack, change):
    """config.toml is clean; the checkpoint (loadable with weights_only=True) names the payload
    in the configuration it carries."""
    folder, run, marker, env = attack
    checkpoint = torch.load(run / "checkpoint.pt", weights_only=True)
    if "plugins" in change:
        checkpoint["config"]["plugins"] = change["plugins"]
    else:
        checkpoint["config"]["model"]["kind"] = change["model"]
    torch.save(checkpoint, run / "checkpoint.pt")
    message = refused(*pyro_vae(["evaluate", "RUN", "--num-samples", 2], folder, env))
    assert "checkpoint.pt" in message and not marker.exists()
    refused(*pyro_vae(["train", "--out", "RUN", "--resume", "--epochs", 2], folder, env))
    assert not marker.exists()


@pytest.mark.slow
def test_a_module_attribute_kind_is_neither_imported_nor_called(attack):
    folder, run, marker, env = attack
    set_config(run, 'kind = "vae"', 'kind = "marker_plugin:build"')
    message = refused(*pyro_vae(["evaluate", "RUN", "--num-samples", 2], folder, env))
    assert "--plugin marker_plugin" in message and not marker.exists()


@pytest.mark.parametrize("kind", ["builtins:print", "os:system", "subprocess:run",
                                  "shutil:rmtree"])
def test_a_standard_library_kind_is_refused_without_being_called(tmp_path, trained, capsys,
                                                                  kind):
    run = tmp_path / "RUN"
    shutil.copytree(trained, run)
    set_config(run, 'kind = "vae"', f'kind = "{kind}"')
    code, out, err = run_cli(capsys, "evaluate", run, "--num-samples", 2)
    message = refused(code, err)
    # Python's standard library is no plugin: nothing to trust, so no --plugin is suggested.
    assert "standard library" in message and "--plugin" not in message and not out


def test_a_standard_library_plugin_is_not_imported(tmp_path, trained, capsys):
    """The red team's first case: ``plugins = ["this"]`` printed the Zen of Python."""
    assert "this" not in sys.modules
    run = tmp_path / "RUN"
    shutil.copytree(trained, run)
    set_config(run, "[data]", 'plugins = ["this"]\n\n[data]')
    code, out, err = run_cli(capsys, "evaluate", run, "--num-samples", 2)
    refused(code, err)
    assert "this" not in sys.modules and "Beautiful is better" not in out + err


def test_a_trusted_plugin_module_lends_only_what_it_defines(tmp_path, monkeypatch):
    """Even with the module trusted, a run may name only a factory the module defines, not a
    function it merely imported (``os.system``)."""
    (tmp_path / "trusted_factories.py").write_text(
        "import os\n\n\ndef build(config, image_shape, num_data=None):\n    return None\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    load_plugin("trusted_factories", "given by the test")
    with untrusted("RUN/config.toml"):
        assert import_object("trusted_factories:build").__name__ == "build"
        with pytest.raises(ConfigError, match="not a factory defined in the plugin module"):
            import_object("trusted_factories:os.system")


def test_a_runs_download_setting_neither_downloads_nor_creates_folders(tmp_path, trained,
                                                                      capsys):
    run = tmp_path / "RUN"
    shutil.copytree(trained, run)
    target = tmp_path / "elsewhere" / "data"
    set_config(run, 'dataset = "digits"', 'dataset = "mnist"')
    set_config(run, "download = false", f'download = true\ndata_dir = "{target}"')
    code, _, err = run_cli(capsys, "evaluate", run, "--num-samples", 2)
    assert "not found" in refused(code, err)
    assert not (tmp_path / "elsewhere").exists()


@pytest.mark.parametrize("kind", ["symlink", "fifo"])
def test_a_lock_file_that_is_a_link_or_a_pipe_is_refused_and_nothing_is_overwritten(
        tmp_path, trained, capsys, kind):
    run = tmp_path / "RUN"
    shutil.copytree(trained, run)
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me\n")
    if kind == "symlink":
        (run / ".pyro-vae.lock").symlink_to(precious)
    else:
        os.mkfifo(run / ".pyro-vae.lock")
    before = (run / "checkpoint.pt").read_bytes()
    code, _, err = run_cli(capsys, "train", "--out", run, "--resume", "--epochs", 2)
    assert ("symbolic link" if kind == "symlink" else "named pipe") in refused(code, err)
    assert precious.read_text() == "keep me\n"
    assert (run / "checkpoint.pt").read_bytes() == before


@pytest.mark.slow
@pytest.mark.parametrize("name, kind", [("checkpoint.pt", "fifo"), ("config.toml", "fifo"),
                                        ("checkpoint.pt", "device")])
def test_a_pipe_or_device_in_place_of_a_run_file_is_refused_not_waited_on(
        attack, name, kind):
    """Run in a child process with a time limit, so that a regression fails the test rather
    than hanging the suite."""
    folder, run, _, env = attack
    (run / name).unlink()
    if kind == "fifo":
        os.mkfifo(run / name)
    else:
        (run / name).symlink_to("/dev/zero")
    for command in (["evaluate", "RUN", "--num-samples", 2],
                    ["train", "--out", "RUN", "--resume", "--epochs", 2]):
        message = refused(*pyro_vae(command, folder, env, timeout=120))
        assert "not a regular file" in message and name in message
