"""Small helpers shared by the test modules."""

from pyro_vae.cli import main


def run_cli(capsys, *argv):
    """Run ``pyro-vae ARGV`` in-process; return (exit code, stdout, stderr), and require that
    stderr holds no traceback (every failure must be one clear paragraph)."""
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return code, captured.out, captured.err
