"""Datasets of one's own: tiny, unreadable or unlabelled .npz files end in strict JSON or in
one clear paragraph.
"""

import json

import numpy as np
import pytest

from pyro_vae.errors import DataError
from pyro_vae.training import train

from helpers import QUICK_TRAIN, one_epoch_config, run_cli, three_epoch_config


@pytest.mark.slow
def test_tiny_datasets_finish_with_strict_json(tmp_path):
    import numpy as np

    path = tmp_path / "tiny.npz"
    np.savez(path, x=(np.random.default_rng(0).random((6, 8, 8)) > 0.5).astype(np.float32))
    config = three_epoch_config(epochs=1).with_overrides({"data": {"dataset": f"file:{path}",
                                                      "binarize": "none"}})
    train(config, tmp_path / "run")
    text = (tmp_path / "run" / "summary.json").read_text()
    assert "NaN" not in text and json.loads(text)["num_test_datapoints"] == 1


def test_unreadable_npz_contents(tmp_path):
    import numpy as np

    from pyro_vae.data import load_dataset
    from pyro_vae.errors import DataError

    objects = tmp_path / "objects.npz"
    np.savez(objects, x=np.array([{"a": 1}, {"b": 2}], dtype=object))
    with pytest.raises(DataError, match="cannot be read"):
        load_dataset(f"file:{objects}")
    single = tmp_path / "single.npz"
    with open(single, "wb") as handle:
        np.save(handle, np.zeros((4, 4)))
    with pytest.raises(DataError, match="single array"):
        load_dataset(f"file:{single}")
    two = tmp_path / "two.npz"
    np.savez(two, x=np.zeros((2, 4)))
    with pytest.raises(DataError, match="empty"):
        load_dataset(f"file:{two}")


@pytest.mark.slow
def test_evaluate_json_of_a_one_image_split_is_strict_json(tmp_path, capsys):
    path = tmp_path / "tiny.npz"
    np.savez(path, x=(np.random.default_rng(0).random((10, 4, 4)) > 0.5).astype(np.float32))
    config = one_epoch_config().with_overrides({"data": {"dataset": f"file:{path}", "binarize": "none"}})
    train(config, tmp_path / "run")
    code, out, _ = run_cli(capsys, "evaluate", tmp_path / "run", "--split", "validation",
                           "--json", "--num-samples", 2)
    summary = json.loads(out, parse_constant=lambda name: pytest.fail(f"bare {name}"))
    assert code == 0 and summary["num_test_datapoints"] == 1
    assert summary["test_elbo_stderr"] is None


def test_an_npz_with_unlabelled_x_test_says_to_add_y_test(tmp_path, capsys):
    from sklearn.datasets import load_digits
    digits = load_digits()
    x, y = (digits.data / 16).astype(np.float32), digits.target
    np.savez(tmp_path / "d.npz", x=x[:1500], y=y[:1500], x_test=x[1500:])
    code, _, err = run_cli(capsys, "train", "--model", "cvae", "--dataset",
                           f"file:{tmp_path / 'd.npz'}", *QUICK_TRAIN, "--out", tmp_path / "run")
    assert code == 2 and "y_test beside x_test" in err and not (tmp_path / "run").exists()
