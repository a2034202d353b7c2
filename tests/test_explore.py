"""The latent-space explorer (`pyro-vae explore`, ``pyro_vae.explore``): the page's decoder
against torch's, the command's refusals, and the page itself in headless Chromium (no console
error, nothing fetched, a drag changes the image, pixels equal torch's within 1e-5).

The tests that train runs or open the browser are marked slow (about 30 s for the runs, a
few seconds each after). Browser tests need Debian's ``chromium`` and ``chromium-driver``
(``.ci/run`` installs them) and selenium (the ``dev`` extra). Under CI (``$CI`` set) a missing
browser fails the tests; elsewhere they are skipped with the reason shown.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import html
import io
import json
import os
import re
import shutil
import tempfile
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from pyro_vae.config import Config
from pyro_vae.errors import ConfigError, PyroVAEError
from pyro_vae.data import load_dataset
from pyro_vae.explorer import (Explorer, check_explorable, decoder_program, explore,
                               output_transform, page_data, run_program)
from pyro_vae.models import build_vae
from pyro_vae.runs import load_trained
from pyro_vae.training import train
from tests.helpers import run_cli

#: The page must decode as torch does, within this (the issue's bound).
PIXEL_TOLERANCE = 1e-5
#: Flags for a headless Chromium that reaches for nothing outside the page.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--window-size=1400,1200")


def _quick_run(path, **model):
    """A digits run trained for 2 epochs with settings that keep its code in use (a collapsed
    code would decode every z to the mean image, and a drag could change nothing)."""
    config = Config().with_overrides({
        "model": model, "evaluate": {"num_samples": 2},
        "train": {"epochs": 2, "batch_size": 32, "beta": 0.5, "learning_rate": 3e-3,
                  "kl_warmup_epochs": 2}})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # several times faster than two on a busy 2-core machine
    try:
        with contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            train(config, path)
    finally:
        torch.set_num_threads(threads)
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A VAE (GELU MLP, D = 3: the map is a PCA plane), a CVAE (tanh, D = 2) and a VAE with a
    convolutional decoder (shown on a grid)."""
    root = tmp_path_factory.mktemp("explore")
    return {
        "vae": _quick_run(root / "vae", hidden_dims=[64, 32], latent_dim=3, activation="gelu"),
        "cvae": _quick_run(root / "cvae", kind="cvae", hidden_dims=[32], latent_dim=2,
                           activation="tanh"),
        "conv": _quick_run(root / "conv", network="conv", hidden_dims=[32], latent_dim=4),
    }


def _points(explorer: Explorer) -> np.ndarray:
    data = explorer.data
    raw = base64.b64decode(data["points"]["z"])
    return np.frombuffer(raw, dtype="<f4").reshape(-1, data["latent_dim"])


@torch.no_grad()
def _torch_decode(vae, z, label=None) -> np.ndarray:
    z = torch.tensor(np.array(z, dtype=np.float32)).reshape(1, -1)
    if label is None:
        return vae.decode(z)[0].double().numpy()
    return vae.decode(z, torch.tensor([label]))[0].double().numpy()


# -- the decoder program, without a browser --------------------------------------------------

@pytest.mark.parametrize("model", [
    {"activation": "relu"}, {"activation": "tanh"}, {"activation": "elu"},
    {"activation": "softplus"}, {"activation": "leaky_relu"}, {"activation": "gelu"},
    {"likelihood": "gaussian"},
    {"hidden_dims": []},
    {"kind": "cvae"}, {"kind": "cvae", "decoder_label": "input"},
])
def test_the_page_program_computes_torchs_decode(model):
    torch.manual_seed(0)
    config = Config().with_overrides({"model": {"hidden_dims": [24, 16], "latent_dim": 3,
                                                **model}}).model
    vae = build_vae(config, (1, 8, 8)).eval()
    for parameter in vae.parameters():  # weights far from the start, outputs far from 0.5
        parameter.data.normal_(0, 0.7)
    if model.get("likelihood") == "gaussian":
        vae.likelihood.initialize_from(torch.rand(50, 64) * 16)
    program = decoder_program(vae.decoder)
    output = output_transform(vae.likelihood)
    assert program is not None and output is not None
    z = torch.randn(200, 3) * 2
    labelled = model.get("kind") == "cvae"
    labels = torch.arange(200) % 10 if labelled else None
    exact = copy.deepcopy(vae).double()  # torch's decode in float64: the program exactly
    with torch.no_grad():
        expected = vae.decode(z, labels) if labelled else vae.decode(z)
        expected64 = exact.decode(z.double(), labels) if labelled else exact.decode(z.double())
    page = run_program(program, output, z, labels, 10 if labelled else 0)
    scale = max(1.0, float(expected64.abs().max()))  # Gaussian means are in the data's units
    assert float((page - expected64).abs().max()) < 1e-12 * scale
    assert float((page - expected.double()).abs().max()) < PIXEL_TOLERANCE * scale
    if labelled:  # the label matters: another label gives another image
        other = run_program(program, output, z, (labels + 1) % 10, 10)
        assert float((other - page).abs().max()) > 1e-2


@pytest.mark.parametrize("kind", ["discrete", "quadrant_cvae", "quadrant_baseline"])
def test_kinds_without_a_code_of_whole_images_are_refused(kind):
    with pytest.raises(ConfigError, match="no continuous latent code of whole images"):
        check_explorable(SimpleNamespace(model=SimpleNamespace(kind=kind)), "RUN")
    for accepted in ("vae", "cvae", "m2"):
        check_explorable(SimpleNamespace(model=SimpleNamespace(kind=accepted)), "RUN")


def test_what_the_page_does_not_compute_is_left_to_the_grid():
    vae = build_vae(Config().with_overrides({"model": {"network": "conv",
                                                       "hidden_dims": [16]}}).model, (1, 8, 8))
    assert decoder_program(vae.decoder) is None
    vae = build_vae(Config().with_overrides({"model": {
        "likelihood": "continuous_bernoulli"}}).model, (1, 8, 8))
    assert decoder_program(vae.decoder) is not None and output_transform(vae.likelihood) is None


def test_more_than_16_dimensions_get_sliders_in_the_maps_plane():
    data = load_dataset("digits")
    config = Config().with_overrides({"model": {"hidden_dims": [16], "latent_dim": 20}})
    vae = build_vae(config.model, data.image_shape).eval()
    page = page_data(vae, config, data.test_x[:100], data.test_y[:100], data.image_shape, "t")
    assert page["decoder"]["kind"] == "mlp" and page["sliders"] == "plane"
    assert page["plane"]["names"] == ["PC1", "PC2"] and len(page["slider_ranges"]) == 2
    assert any("D = 20" in note and "plane" in note for note in page["notes"])
    axes = np.array(page["plane"]["axes"])
    assert np.allclose(axes @ axes.T, np.eye(2), atol=1e-9)  # orthonormal: u, w are lengths in z


# -- the command and the library ----------------------------------------------------------------

@pytest.mark.slow
def test_the_command_writes_one_offline_page(runs, tmp_path, capsys):
    out = tmp_path / "explorer.html"
    code, stdout, err = run_cli(capsys, "explore", runs["vae"], "--out", out, "--points", 300)
    assert code == 0 and err == "" and f"wrote {out}" in stdout and "decoded live" in stdout
    page = out.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and "default-src 'none'" in page
    # Nothing to fetch: no URL, no external script, style or image, no request from script.
    embedded = re.search(r'id="pyro-vae-data">(.*?)</script>', page, re.S)[1]
    code_and_markup = page.replace(embedded, "")  # base64 in the data could spell anything
    assert not re.search(r"(https?|ftp|wss?):|\bsrc=|href=\"(?!data:)|url\(|@import|fetch\(|"
                         r"XMLHttpRequest|WebSocket|import\(", code_and_markup)
    data = json.loads(embedded.replace("<\\/", "</"))
    assert data["points"]["count"] == 300 and data["decoder"]["kind"] == "mlp"
    assert data["sliders"] == "dimensions" and len(data["slider_ranges"]) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["explorer.html"]


@pytest.mark.slow
def test_the_library_prints_nothing_and_shows_inline(runs, capsys):
    explorer = explore(runs["vae"], points=50)
    assert capsys.readouterr() == ("", "")
    shown = explorer._repr_html_()
    srcdoc = re.fullmatch(r'<iframe srcdoc="([^"]*)".*</iframe>', shown, re.S)[1]
    assert html.unescape(srcdoc) == explorer.html
    assert 'sandbox="allow-scripts"' in shown


@pytest.mark.slow
def test_bad_input_is_one_paragraph_and_no_file(runs, tmp_path, capsys):
    out = tmp_path / "page.html"
    code, _, err = run_cli(capsys, "explore", tmp_path / "missing", "--out", out)
    assert code == 2 and "does not exist" in err and err.count("\n") == 1
    no_checkpoint = tmp_path / "no-checkpoint"
    shutil.copytree(runs["vae"], no_checkpoint)
    (no_checkpoint / "checkpoint.pt").unlink()
    code, _, err = run_cli(capsys, "explore", no_checkpoint, "--out", out)
    assert code == 2 and "checkpoint.pt does not exist" in err
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    code, _, err = run_cli(capsys, "explore", runs["vae"], "--out", blocker / "page.html",
                           "--points", 20)
    assert code == 2 and "cannot write the explorer page" in err and "Nothing was written" in err
    code, _, err = run_cli(capsys, "explore", runs["vae"], "--out", tmp_path / "page.png")
    assert code == 2 and "ending in .html" in err
    code, _, err = run_cli(capsys, "explore", runs["vae"], "--out", out, "--points", 0)
    assert code == 2 and "--points" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "no-checkpoint"]


@pytest.mark.slow
def test_a_failed_write_leaves_the_old_page_whole(runs, tmp_path, monkeypatch):
    out = tmp_path / "page.html"
    out.write_text("the old page")
    explorer = explore(runs["vae"], points=20)

    def fail(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(PyroVAEError, match="No space left"):
        explorer.save(out)
    assert out.read_text() == "the old page" and [p.name for p in tmp_path.iterdir()] == [
        "page.html"]


@pytest.mark.slow
def test_a_decoder_the_page_cannot_run_is_shown_on_a_grid_and_says_so(runs):
    explorer = explore(runs["conv"], points=100, grid_size=8)
    assert explorer.decoder_kind == "grid" and explorer.data["sliders"] == "plane"
    assert any("precomputed, not decoded live" in note for note in explorer.data["notes"])
    assert len(base64.b64decode(explorer.data["decoder"]["images"])) == 8 * 8 * 64


# -- the page in a real browser ------------------------------------------------------------------

@pytest.fixture(scope="module")
def browser():
    """Headless Chromium driven by selenium (Debian's chromium and chromium-driver)."""
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        webdriver = None
    if webdriver is None or not chromium or not driver_path:
        missing = ("selenium (pip install -e '.[dev]')" if webdriver is None else
                   "chromium and chromium-driver (apt-get install chromium chromium-driver)")
        if os.environ.get("CI"):
            pytest.fail(f"the explorer's browser tests need {missing}; .ci/run installs it.")
        pytest.skip(f"headless browser not available: install {missing} to run these tests")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    profile = tempfile.mkdtemp(prefix="pyro-vae-chromium-")
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    driver.set_script_timeout(30)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def _open(browser, explorer: Explorer, path) -> list[dict]:
    """Load the saved page; return its console messages up to load."""
    explorer.save(path)
    browser.get(path.as_uri())
    assert browser.execute_script("return typeof window.pyroVaeState") == "function"
    return browser.get_log("browser")


def _errors(log: list[dict]) -> list[dict]:
    return [entry for entry in log if entry["level"] in ("SEVERE", "ERROR")]


def _state(browser) -> dict:
    return browser.execute_script("return window.pyroVaeState()")


def _shown_grey(browser) -> np.ndarray:
    """The decoded image as drawn: the grey level at the centre of each image pixel."""
    return np.array(browser.execute_script("""
        const [C, H, W] = JSON.parse(document.getElementById('pyro-vae-data').textContent)
            .image_shape;
        const canvas = document.getElementById('image');
        const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
        const out = [];
        for (let r = 0; r < H; r++) for (let c = 0; c < W; c++) {
            const x = Math.floor((c + 0.5) * canvas.width / W);
            const y = Math.floor((r + 0.5) * canvas.height / H);
            out.push(data[4 * (y * canvas.width + x)]);
        }
        return out;"""), dtype=float)


def _pointer(browser, path: list[tuple[float, float]], press: bool) -> None:
    """Move the mouse along ``path`` (page coordinates), pressed from the first point to the
    last when ``press``."""
    from selenium.webdriver.common.actions.action_builder import ActionBuilder

    actions = ActionBuilder(browser)
    pointer = actions.pointer_action
    pointer.move_to_location(round(path[0][0]), round(path[0][1]))
    if press:
        pointer.pointer_down()
    for x, y in path[1:]:
        pointer.move_to_location(round(x), round(y))
    if press:
        pointer.pointer_up()
    actions.perform()


def _isolated_point(browser, count: int) -> int:
    """The test encoding farthest (on screen) from its nearest neighbour."""
    xy = np.array([[p["x"], p["y"]] for p in browser.execute_script(
        "return Array.from({length: arguments[0]}, (_, i) => window.pyroVaePointOnScreen(i))",
        count)])
    distance = np.linalg.norm(xy[:, None] - xy[None], axis=-1) + np.eye(len(xy)) * 1e9
    return int(distance.min(1).argmax())


@pytest.mark.slow
def test_the_page_loads_without_console_errors_and_fetches_nothing(runs, browser, tmp_path):
    log = _open(browser, explore(runs["vae"], points=400), tmp_path / "vae.html")
    assert _errors(log) == []
    assert browser.execute_script("return performance.getEntriesByType('resource').length") == 0
    assert browser.find_element("id", "title").text.startswith("pyro-vae latent explorer")
    assert browser.find_element("id", "note").get_attribute("hidden") is not None
    assert len(browser.find_elements("css selector", "#sliders input[type=range]")) == 3
    assert len(browser.find_elements("css selector", "#strip canvas")) == 9
    assert not browser.find_element("id", "label-row").is_displayed()


@pytest.mark.slow
def test_the_pages_pixels_equal_torchs(runs, browser, tmp_path):
    explorer = explore(runs["vae"], points=400)
    _open(browser, explorer, tmp_path / "vae.html")
    _, vae, _ = load_trained(runs["vae"])
    rng = np.random.default_rng(0)
    points = _points(explorer)
    zs = [*points[:5], *(rng.standard_normal((5, 3)) * 2).astype(np.float32)]
    worst = 0.0
    for z in zs:
        page = np.array(browser.execute_script("return window.pyroVaeDecode(arguments[0])",
                                               [float(v) for v in z]))
        worst = max(worst, float(np.abs(page - _torch_decode(vae, z)).max()))
    assert worst < PIXEL_TOLERANCE
    state = _state(browser)  # what the page shows at the start: test encoding 0
    assert state["point"] == 0 and np.allclose(state["z"], points[0], atol=0)
    assert np.abs(np.array(state["pixels"]) - _torch_decode(vae, points[0])).max() \
        < PIXEL_TOLERANCE
    expected_grey = np.round(255 * np.clip(_torch_decode(vae, points[0]), 0, 1))
    assert np.abs(_shown_grey(browser) - expected_grey).max() <= 1


@pytest.mark.slow
def test_pointing_and_dragging_change_the_image(runs, browser, tmp_path):
    explorer = explore(runs["vae"], points=400)
    log = _open(browser, explorer, tmp_path / "vae.html")
    _, vae, _ = load_trained(runs["vae"])
    points = _points(explorer)
    # Pointing at a test encoding shows its decoded image.
    target = _isolated_point(browser, explorer.data["points"]["count"])
    where = browser.execute_script("return window.pyroVaePointOnScreen(arguments[0])", target)
    _pointer(browser, [(where["x"] + 40, where["y"] + 40), (where["x"], where["y"])], False)
    state = _state(browser)
    assert state["point"] == target and np.array_equal(np.float32(state["z"]), points[target])
    pointed = _shown_grey(browser)
    assert np.abs(pointed - np.round(255 * _torch_decode(vae, points[target]))).max() <= 1
    # Dragging it moves z through the map's plane, and the image follows.
    path = [(where["x"], where["y"])] + [(where["x"] + 12 * k, where["y"] - 9 * k)
                                         for k in range(1, 8)]
    _pointer(browser, path, True)
    dragged = _state(browser)
    assert dragged["point"] == -1
    moved = np.array(dragged["z"]) - points[target]
    assert np.linalg.norm(moved) > 0.1
    axes = np.array(explorer.data["plane"]["axes"])
    assert np.abs(moved - axes.T @ (axes @ moved)).max() < 1e-9  # within the plane
    shown = _shown_grey(browser)
    assert np.abs(shown - pointed).sum() > 255  # the image changed visibly
    assert np.abs(np.array(dragged["pixels"]) - _torch_decode(vae, dragged["z"])).max() \
        < PIXEL_TOLERANCE
    assert np.abs(shown - np.round(255 * _torch_decode(vae, dragged["z"]))).max() <= 1
    assert _errors(log + browser.get_log("browser")) == []


@pytest.mark.slow
def test_a_slider_and_the_interpolation_move_z(runs, browser, tmp_path):
    from selenium.webdriver.common.keys import Keys

    explorer = explore(runs["vae"], points=400)
    _open(browser, explorer, tmp_path / "vae.html")
    _, vae, _ = load_trained(runs["vae"])
    points = _points(explorer)
    before = _state(browser)
    slider = browser.find_elements("css selector", "#sliders input[type=range]")[1]
    slider.send_keys(Keys.ARROW_RIGHT * 200)
    after = _state(browser)
    assert after["z"][1] > before["z"][1] + 0.5
    assert after["z"][0] == before["z"][0] and after["z"][2] == before["z"][2]
    assert np.abs(np.array(after["pixels"]) - _torch_decode(vae, after["z"])).max() \
        < PIXEL_TOLERANCE
    # A = test encoding 0 and B = the first of another label at the start; t = 0.5 is halfway.
    labels = explorer.data["points"]["labels"]
    other = next(i for i, label in enumerate(labels) if label != labels[0])
    browser.execute_script("const t = document.getElementById('t'); t.value = 0.5; "
                           "t.dispatchEvent(new Event('input'));")
    halfway = _state(browser)
    expected = 0.5 * points[0].astype(float) + 0.5 * points[other].astype(float)
    assert np.abs(np.array(halfway["z"]) - expected).max() < 1e-12
    # B <- the current z; t = 1 then shows it.
    slider.send_keys(Keys.ARROW_LEFT * 100)
    chosen = _state(browser)["z"]
    browser.find_element("id", "set-b").click()
    browser.find_elements("css selector", "#strip canvas")[-1].click()
    assert np.abs(np.array(_state(browser)["z"]) - chosen).max() < 1e-12


@pytest.mark.slow
def test_the_label_selector_of_a_conditional_run(runs, browser, tmp_path):
    from selenium.webdriver.support.ui import Select

    explorer = explore(runs["cvae"], points=300)
    log = _open(browser, explorer, tmp_path / "cvae.html")
    _, vae, _ = load_trained(runs["cvae"])
    assert browser.find_element("id", "label-row").is_displayed()
    labels = explorer.data["points"]["labels"]
    assert _state(browser)["label"] == labels[0]  # the point's own label at first
    select = Select(browser.find_element("id", "label"))
    assert len(select.options) == 11
    images = {}
    for label in (3, 7):
        select.select_by_value(str(label))
        state = _state(browser)
        assert state["label"] == label
        assert np.abs(np.array(state["pixels"]) - _torch_decode(vae, state["z"], label)).max() \
            < PIXEL_TOLERANCE
        images[label] = _shown_grey(browser)
    assert np.abs(images[3] - images[7]).sum() > 255
    z = [0.3, -1.2]
    page = browser.execute_script("return window.pyroVaeDecode(arguments[0], 5)", z)
    assert np.abs(np.array(page) - _torch_decode(vae, z, 5)).max() < PIXEL_TOLERANCE
    assert _errors(log + browser.get_log("browser")) == []


@pytest.mark.slow
def test_the_notebook_view_runs_the_same_page(runs, browser, tmp_path):
    """What Jupyter shows (``_repr_html_``: an iframe whose srcdoc is the page) runs in the
    browser as the saved page does."""
    explorer = explore(runs["vae"], points=200)
    notebook_cell = tmp_path / "cell.html"
    notebook_cell.write_text(f"<!DOCTYPE html><html><body>{explorer._repr_html_()}</body></html>",
                             encoding="utf-8")
    browser.get(notebook_cell.as_uri())
    browser.switch_to.frame(browser.find_element("tag name", "iframe"))
    try:
        state = _state(browser)
        _, vae, _ = load_trained(runs["vae"])
        assert state["point"] == 0 and state["decoder"] == "mlp"
        assert np.abs(np.array(state["pixels"]) - _torch_decode(vae, state["z"])).max() \
            < PIXEL_TOLERANCE
    finally:
        browser.switch_to.default_content()
    assert _errors(browser.get_log("browser")) == []


def test_the_grid_fallback_in_the_browser(runs, browser, tmp_path):
    explorer = explore(runs["conv"], points=200, grid_size=12)
    log = _open(browser, explorer, tmp_path / "conv.html")
    assert _errors(log) == []
    note = browser.find_element("id", "note")
    assert note.is_displayed() and "precomputed, not decoded live" in note.text
    assert len(browser.find_elements("css selector", "#sliders input[type=range]")) == 2
    # A z on the plane at a grid point shows that grid point's image, to 1/255.
    _, vae, _ = load_trained(runs["conv"])
    plane = explorer.data["plane"]
    u0, u1, w0, w1 = plane["extent"]
    centre, axes = np.array(plane["centre"]), np.array(plane["axes"])
    z = centre + (u0 + 3 / 11 * (u1 - u0)) * axes[0] + (w0 + 8 / 11 * (w1 - w0)) * axes[1]
    page = np.array(browser.execute_script("return window.pyroVaeDecode(arguments[0])",
                                           [float(v) for v in z]))
    assert np.abs(page - _torch_decode(vae, z)).max() <= 0.5 / 255 + 1e-6
