"""The interactive latent-space explorer: one self-contained HTML page of a trained run.

The page (:mod:`pyro_vae.explorer_page`) shows the test encodings μ(x) — ``latent_mean(x)``, or
the mean of ``posterior(x, y)`` for a label-conditional kind — on a map coloured by label, and
decodes whatever point the reader points at, drags to, or sets with the sliders:

    E[x | z] = sigmoid(f(z))                      (Bernoulli; f the decoder, logits out)
    E[x | z] = m + s · f(z)                       (Gaussian, standardized by m and s)

The map is the latent space itself for D ≤ 2, else the plane through the mean encoding c
spanned by the first two principal components v₁, v₂ of the encodings: a map position (u, w)
is z = c + u v₁ + w v₂, and a z is shown at ((z − c)·v₁, (z − c)·v₂).

**An MLP decoder runs in the page.** Its layers become a *program* (:func:`decoder_program`:
linear maps, activations, one-hot labels appended) whose float32 weights the page embeds and
runs in Float64. Before a program is used, :func:`run_program` — the same arithmetic in
torch's float64 — is checked against the model's own ``decode`` on test encodings and random
points; a decoder that is not such an MLP, or whose program disagrees by more than
:data:`DECODE_TOLERANCE`, is shown instead through images precomputed on a grid over the map's
plane, and the page says so.

In a notebook, ``pyro_vae.explore(run_dir)`` returns an :class:`Explorer`, which displays the
page inline (``_repr_html_``: an ``iframe`` with the page as ``srcdoc``).
"""

from __future__ import annotations

import base64
import html
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pyro_vae.errors import ConfigError, PyroVAEError
from pyro_vae.explorer_page import TEMPLATE
from pyro_vae.likelihoods import (BernoulliLikelihood, ContinuousBernoulliLikelihood,
                                  GaussianLikelihood)
from pyro_vae.models.conditional import LabelledDecoder, LabelledMLPDecoder, one_hot
from pyro_vae.networks import MLPDecoder
from pyro_vae.protocol import display_name, has
from pyro_vae.runs import load_trained
from pyro_vae.training import prepare_data

#: The most latent dimensions that get a slider each; beyond, sliders move z in the map's plane.
MAX_SLIDER_DIMS = 16
#: The largest difference allowed between the page's decoder and the model's ``decode`` (in
#: units of the pixels' display range where that is wider than 1: float32 rounding is relative).
DECODE_TOLERANCE = 1e-5
#: Decoded images in the interpolation strip.
INTERPOLATION_STEPS = 9

#: Activation modules the page computes, with the options it needs from each.
_ACTIVATIONS: dict[type, tuple[str, tuple[str, ...]]] = {
    nn.ReLU: ("relu", ()), nn.Tanh: ("tanh", ()), nn.Sigmoid: ("sigmoid", ()),
    nn.ELU: ("elu", ("alpha",)), nn.LeakyReLU: ("leaky_relu", ("negative_slope",)),
    nn.Softplus: ("softplus", ("beta", "threshold")), nn.GELU: ("gelu", ("approximate",)),
    nn.Identity: ("identity", ()),
}


# -- the decoder as a program the page can run ---------------------------------------------------

def _sequential_program(module: nn.Module) -> list[dict[str, Any]] | None:
    """The operations of an ``nn.Sequential`` of linear layers and activations (nested
    sequentials flattened), or ``None`` if it holds anything else."""
    program: list[dict[str, Any]] = []
    for layer in module.children() if isinstance(module, nn.Sequential) else [module]:
        if isinstance(layer, nn.Sequential):
            inner = _sequential_program(layer)
            if inner is None:
                return None
            program += inner
        elif type(layer) is nn.Linear:
            program.append({"op": "linear", "layer": layer})
        elif type(layer) in _ACTIVATIONS:
            name, options = _ACTIVATIONS[type(layer)]
            program.append({"op": "act", "name": name,
                            **{option: getattr(layer, option) for option in options}})
        else:
            return None
    return program


def decoder_program(decoder: nn.Module) -> list[dict[str, Any]] | None:
    """The decoder as operations ``label`` (append one_hot(y)), ``linear`` (holding its
    ``nn.Linear``) and ``act``, in order; ``None`` for a decoder that is no MLP the page knows
    (``MLPDecoder``, an ``nn.Sequential``, ``LabelledDecoder`` or ``LabelledMLPDecoder``)."""
    if type(decoder) is MLPDecoder:
        return _sequential_program(decoder.net)
    if type(decoder) is nn.Sequential:
        return _sequential_program(decoder)
    if type(decoder) is LabelledDecoder:
        inner = decoder_program(decoder.decoder)
        return None if inner is None else [{"op": "label"}, *inner]
    if type(decoder) is LabelledMLPDecoder:
        activation = _sequential_program(decoder.act)
        if activation is None:
            return None
        program: list[dict[str, Any]] = []
        for layer in decoder.hidden:
            program += [{"op": "label"}, {"op": "linear", "layer": layer}, *activation]
        return program + [{"op": "label"}, {"op": "linear", "layer": decoder.output}]
    return None


def output_transform(likelihood: nn.Module) -> dict[str, Any] | None:
    """How the page turns the decoder's output into E[x|z] for ``likelihood``: sigmoid of the
    logits (Bernoulli) or shift + spread · output (Gaussian); ``None`` for any other.

    The continuous Bernoulli's mean is left to the grid: torch computes it in float32 as
    p/(2p − 1) + 1/(log(1 − p) − log p), which cancels near p = ½ and saturates at |logit| > 17,
    so its own values are off by more than the page's tolerance.
    """
    if type(likelihood) is BernoulliLikelihood:
        return {"kind": "sigmoid"}
    if type(likelihood) is GaussianLikelihood:
        shift = likelihood.shift.detach().float().cpu()
        return {"kind": "gaussian_mean", "shift_tensor": shift,
                "spread": float(likelihood.spread)}
    return None


def _activation(op: dict[str, Any], h: torch.Tensor) -> torch.Tensor:
    name = op["name"]
    if name == "relu":
        return F.relu(h)
    if name == "tanh":
        return torch.tanh(h)
    if name == "sigmoid":
        return torch.sigmoid(h)
    if name == "elu":
        return F.elu(h, op["alpha"])
    if name == "leaky_relu":
        return F.leaky_relu(h, op["negative_slope"])
    if name == "softplus":
        return F.softplus(h, op["beta"], op["threshold"])
    if name == "gelu":
        return F.gelu(h, approximate=op["approximate"])
    return h


@torch.no_grad()
def run_program(program: list[dict[str, Any]], output: dict[str, Any], z: torch.Tensor,
                labels: torch.Tensor | None = None, num_classes: int = 0) -> torch.Tensor:
    """E[x|z] by the page's arithmetic, in float64: what the page computes for ``z`` ``[N, D]``
    (with ``labels`` ``[N]`` for a labelled decoder)."""
    h = z.double()
    for op in program:
        if op["op"] == "label":
            h = torch.cat([h, one_hot(labels, num_classes, torch.float64)], -1)
        elif op["op"] == "linear":
            layer = op["layer"]
            h = F.linear(h, layer.weight.double(), layer.bias.double())
        else:
            h = _activation(op, h)
    if output["kind"] == "sigmoid":
        return torch.sigmoid(h)
    return output["shift_tensor"].double() + output["spread"] * h


# -- the page's data -----------------------------------------------------------------------------

def _b64(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array).tobytes()).decode("ascii")


def _f32(tensor: torch.Tensor) -> str:
    return _b64(tensor.detach().cpu().float().numpy().astype("<f4"))


@dataclass
class Encodings:
    """Test encodings μ(x) ``[N, D]`` with their labels, and the map's plane."""

    z: torch.Tensor
    labels: torch.Tensor | None
    centre: torch.Tensor
    axes: torch.Tensor  # [2, D], orthonormal rows (a zero row when D = 1)
    names: list[str]
    description: str

    def project(self, z: torch.Tensor) -> torch.Tensor:
        """(u, w) of each row of ``z`` in the plane."""
        return (z.double() - self.centre) @ self.axes.T

    def plane_points(self, uw: torch.Tensor) -> torch.Tensor:
        """z = c + u v₁ + w v₂ for each row (u, w) of ``uw``."""
        return self.centre + uw.double() @ self.axes


def map_plane(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[str], str]:
    """(centre, axes ``[2, D]``, axis names, description) of the map: the coordinates
    themselves for D ≤ 2, else the first two principal components of ``z``."""
    dims = z.shape[1]
    z = z.double()
    if dims <= 2:
        axes = torch.zeros(2, dims, dtype=torch.float64)
        axes[0, 0] = 1.0
        if dims == 2:
            axes[1, 1] = 1.0
        names = ["z1", "z2"] if dims == 2 else ["z1", "(none)"]
        return (torch.zeros(dims, dtype=torch.float64), axes, names,
                "Test encodings μ(x): the latent space itself")
    centre = z.mean(0)
    _, _, v = torch.linalg.svd(z - centre, full_matrices=False)
    return (centre, v[:2].clone(), ["PC1", "PC2"],
            f"Test encodings μ(x) in the plane of their first two principal components "
            f"(D = {dims})")


@torch.no_grad()
def encode(vae: nn.Module, config: Any, x: torch.Tensor, y: torch.Tensor | None) -> Encodings:
    """The test encodings through the model protocol: ``latent_mean(x)``, or the mean of
    ``posterior(x, y)`` for a kind whose guide takes the label."""
    z = vae.posterior(x, y).mean if has(config, "labels") else vae.latent_mean(x)
    z = z.detach().float().cpu()
    centre, axes, names, description = map_plane(z)
    return Encodings(z, None if y is None else y.cpu(), centre, axes, names, description)


def _extent(uw: torch.Tensor, margin: float = 0.08) -> list[float]:
    """[u_min, u_max, w_min, w_max] of the map, with a margin (±1 for a flat direction)."""
    extent: list[float] = []
    for k in range(2):
        low, high = float(uw[:, k].min()), float(uw[:, k].max())
        if high - low < 1e-9:
            low, high = low - 1.0, high + 1.0
        pad = margin * (high - low)
        extent += [low - pad, high + pad]
    return extent


def _display_range(likelihood: nn.Module, x: torch.Tensor) -> list[float]:
    """Pixel values drawn black and white: [0, 1], widened to the test images' own range."""
    if isinstance(likelihood, (BernoulliLikelihood, ContinuousBernoulliLikelihood)):
        return [0.0, 1.0]
    return [min(0.0, float(x.min())), max(1.0, float(x.max()))]


def _decode(vae: nn.Module, labelled: bool, z: torch.Tensor, labels: torch.Tensor | None
            ) -> torch.Tensor:
    z = z.float()
    return vae.decode(z, labels) if labelled else vae.decode(z)


@torch.no_grad()
def check_program(vae: nn.Module, labelled: bool, num_classes: int,
                  program: list[dict[str, Any]], output: dict[str, Any],
                  encodings: Encodings, seed: int = 0) -> float:
    """The largest |page − decode| over 64 test encodings and 64 random points spread twice as
    wide (each with a random label where the decoder takes one)."""
    generator = torch.Generator().manual_seed(seed)
    count = min(64, len(encodings.z))
    spread = encodings.z.std(0).clamp_min(1.0) if len(encodings.z) > 1 else 1.0
    random = (torch.randn(64, encodings.z.shape[1], generator=generator) * 2 * spread)
    z = torch.cat([encodings.z[:count], random.float()])
    labels = None
    if labelled:
        labels = torch.randint(num_classes, (len(z),), generator=generator)
    expected = _decode(vae, labelled, z, labels).double()
    page = run_program(program, output, z, labels, num_classes)
    return float((page - expected).abs().max())


def _program_data(program: list[dict[str, Any]], output: dict[str, Any]) -> dict[str, Any]:
    ops = []
    for op in program:
        if op["op"] == "linear":
            layer = op["layer"]
            ops.append({"op": "linear", "n_in": layer.in_features, "n_out": layer.out_features,
                        "weight": _f32(layer.weight), "bias": _f32(layer.bias)})
        else:
            ops.append(dict(op))
    out = {k: v for k, v in output.items() if k != "shift_tensor"}
    if output["kind"] == "gaussian_mean":
        shift = output["shift_tensor"]
        out["shift"] = _f32(shift.reshape(-1)) if shift.numel() > 1 else None
        out["shift_scalar"] = float(shift.reshape(-1)[0]) if shift.numel() == 1 else 0.0
    return {"kind": "mlp", "program": ops, "output": out}


@torch.no_grad()
def decoder_grid(vae: nn.Module, labelled: bool, num_classes: int, encodings: Encodings,
                 extent: list[float], size: int, display_range: list[float]) -> bytes:
    """E[x|z] at the ``size`` × ``size`` points of the map's plane (for each label, where the
    decoder takes one), as bytes 0-255 over ``display_range``: ``[label][row w][column u][P]``."""
    u = torch.linspace(extent[0], extent[1], size, dtype=torch.float64)
    w = torch.linspace(extent[2], extent[3], size, dtype=torch.float64)
    uw = torch.stack(torch.meshgrid(w, u, indexing="ij")[::-1], -1).reshape(-1, 2)
    z = encodings.plane_points(uw).float()
    low, high = display_range
    blocks = []
    for label in range(num_classes if labelled else 1):
        labels = torch.full((len(z),), label, dtype=torch.long) if labelled else None
        images = _decode(vae, labelled, z, labels).double()
        scaled = ((images - low) / (high - low) * 255).round().clamp(0, 255)
        blocks.append(scaled.to(torch.uint8).reshape(-1).numpy())
    return np.concatenate(blocks).tobytes()


def _slider_ranges(encodings: Encodings, extent: list[float], dims: bool) -> list[list[float]]:
    if not dims:
        return [extent[0:2], extent[2:4]]
    z = encodings.z.double()
    return [[min(-3.0, float(z[:, d].min()) - 0.5), max(3.0, float(z[:, d].max()) + 0.5)]
            for d in range(z.shape[1])]


def page_data(vae: nn.Module, config: Any, x: torch.Tensor, y: torch.Tensor | None,
              image_shape: tuple[int, int, int], title: str, grid_size: int | None = None
              ) -> dict[str, Any]:
    """Everything the page shows, as JSON-ready values: the test encodings of ``x`` (labels
    ``y``), the map's plane, and the decoder (a program, or a grid of images)."""
    labelled = has(config, "labels")
    num_classes = int(getattr(vae, "num_classes", 0) or config.model.num_classes) \
        if labelled else 0
    encodings = encode(vae, config, x, y)
    uw = encodings.project(encodings.z)
    extent = _extent(uw)
    likelihood = getattr(vae, "likelihood", None)
    display_range = _display_range(likelihood, x)
    dims = encodings.z.shape[1]
    program = decoder_program(getattr(vae, "decoder", None))
    output = output_transform(likelihood) if likelihood is not None else None
    notes: list[str] = []
    decoder: dict[str, Any] | None = None
    if program is not None and output is not None:
        error = check_program(vae, labelled, num_classes, program, output, encodings)
        if error <= DECODE_TOLERANCE * max(1.0, display_range[1] - display_range[0]):
            decoder = {**_program_data(program, output), "checked_error": error}
        else:
            reason = (f"its decoder computed in the page would differ from the model's own "
                      f"decode by up to {error:.2g}")
    else:
        reason = ("its decoder is not a multilayer perceptron of linear layers and "
                  "activations" if program is None else
                  f"its likelihood ({type(likelihood).__name__}) has a mean the page does not "
                  "compute")
    if decoder is None:
        size = grid_size or (16 if labelled else 24)
        decoder = {"kind": "grid", "size": size,
                   "images": base64.b64encode(decoder_grid(
                       vae, labelled, num_classes, encodings, extent, size,
                       display_range)).decode("ascii")}
        notes.append(f"This run's images are precomputed, not decoded live: {reason}. The "
                     f"page shows images decoded on a {size} × {size} grid over the map's "
                     "plane; a point shows the image of the grid point nearest it"
                     + (" (its projection onto the plane)." if dims > 2 else "."))
    sliders = "dimensions" if decoder["kind"] == "mlp" and dims <= MAX_SLIDER_DIMS else "plane"
    if sliders == "plane" and dims > 2:
        notes.append(f"With D = {dims} latent dimensions the sliders move z in the map's plane "
                     "(PC1, PC2), keeping the rest of z." if decoder["kind"] == "mlp" else
                     "The sliders move z in the map's plane (PC1, PC2).")
    live = ("decoded live in this page from the decoder's weights (Float64; it matched the "
            f"model's decode within {decoder['checked_error']:.1g} when written)"
            if decoder["kind"] == "mlp" else "precomputed on a grid")
    about = (f"{display_name(config)} (D = {dims}, dataset {config.data.dataset!r}, "
             f"{len(encodings.z)} test images). Images: E[x | z], {live}.")
    return {
        "title": title, "about": about, "notes": notes,
        "image_shape": list(image_shape), "latent_dim": dims, "display_range": display_range,
        "points": {"count": len(encodings.z), "z": _f32(encodings.z), "xy": _f32(uw),
                   "labels": None if encodings.labels is None
                   else [int(v) for v in encodings.labels]},
        "plane": {"centre": encodings.centre.tolist(), "axes": encodings.axes.tolist(),
                  "names": encodings.names, "description": encodings.description,
                  "extent": extent},
        "labels": {"num_classes": num_classes} if labelled else None,
        "sliders": sliders, "slider_ranges": _slider_ranges(encodings, extent,
                                                            sliders == "dimensions"),
        "decoder": decoder, "interpolation_steps": INTERPOLATION_STEPS,
    }


def page_html(data: dict[str, Any]) -> str:
    """The page with ``data`` embedded (``</`` escaped, so no string in it ends the script)."""
    payload = json.dumps(data, allow_nan=False, separators=(",", ":")).replace("</", "<\\/")
    return (TEMPLATE.replace("__TITLE__", html.escape(data["title"]))
            .replace("__DATA__", payload))


# -- the explorer of a run -----------------------------------------------------------------------

@dataclass
class Explorer:
    """The explorer page of a run: ``html`` to save or serve; shown inline in Jupyter."""

    data: dict[str, Any]

    @property
    def html(self) -> str:
        return page_html(self.data)

    @property
    def decoder_kind(self) -> str:
        """``"mlp"`` (decoded live in the page) or ``"grid"`` (precomputed images)."""
        return self.data["decoder"]["kind"]

    def save(self, path: str | Path) -> Path:
        """Write the page to ``path`` all-or-nothing (a temporary file renamed into place)."""
        return write_page(path, self.html)

    def _repr_html_(self) -> str:
        return (f'<iframe srcdoc="{html.escape(self.html, quote=True)}" '
                'style="width: 100%; height: 1080px; border: 0" sandbox="allow-scripts" '
                f'title="{html.escape(self.data["title"], quote=True)}"></iframe>')


def write_page(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file in the same folder, renamed over it
    once complete: a failure leaves no file behind."""
    path = Path(path)
    temp = None
    try:
        handle, temp = tempfile.mkstemp(dir=path.parent, prefix="." + path.name, suffix=".tmp")
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(text)
        os.chmod(temp, 0o644)
        os.replace(temp, path)
    except OSError as error:
        if temp is not None:
            Path(temp).unlink(missing_ok=True)
        raise PyroVAEError(f"cannot write the explorer page to {path} "
                           f"({error.strerror or error}): give a file in a folder that exists "
                           "and that you can write to. Nothing was written.") from None
    return path


def check_explorable(config: Any, run_dir: str | Path) -> None:
    """Refuse, in one paragraph, a run whose model has no continuous code of whole images."""
    if not has(config, "pictures") or has(config, "completions") \
            or has(config, "categorical_latents") or has(config, "no_latents"):
        raise ConfigError(f"{run_dir} holds a {display_name(config)} ([model] kind = "
                          f"{config.model.kind!r}), which has no continuous latent code of "
                          "whole images to map and decode; explore a run of a kind that "
                          "draws pictures from z (vae, cvae, m2).")


def explore(run_dir: str | Path, data_dir: str | None = None, points: int = 2000,
            grid_size: int | None = None) -> Explorer:
    """The latent-space explorer of a trained run: the first ``points`` test images' encodings
    on a map, decoded live where the decoder is an MLP (else on a ``grid_size`` grid).

    In Jupyter the returned :class:`Explorer` displays the page inline; ``.save(path)`` writes
    it as one HTML file that works offline.
    """
    if points < 2:
        raise ConfigError(f"points = {points}: the map needs at least 2 test images.")
    if grid_size is not None and not 2 <= grid_size <= 64:
        raise ConfigError(f"grid size {grid_size}: choose 2 to 64 points a side.")
    config, vae, checkpoint = load_trained(run_dir)
    check_explorable(config, run_dir)
    if data_dir:
        config = config.with_overrides({"data": {"data_dir": str(data_dir)}})
    data = prepare_data(config)
    if list(data.image_shape) != list(checkpoint["image_shape"]):
        raise ConfigError(f"dataset {config.data.dataset!r} has images of shape "
                          f"{data.image_shape}, but the model was trained on "
                          f"{tuple(checkpoint['image_shape'])}; use data of the same shape.")
    x = data.test_x[:points]
    y = None if data.test_y is None else data.test_y[:points]
    if has(config, "labels") and y is None:
        if not has(config, "classifier"):
            raise ConfigError(f"{run_dir} holds a {display_name(config)}, whose codes need each "
                              f"image's label, but {config.data.dataset!r} has no test labels; "
                              "use the dataset it was trained on.")
        y = vae.classify(x)  # q(y|x)'s guess, as the other commands use
    if len(x) < 2:
        raise ConfigError(f"dataset {config.data.dataset!r} has {len(x)} test image(s); the "
                          "map needs at least 2.")
    title = f"pyro-vae latent explorer: {Path(run_dir).resolve().name}"
    return Explorer(page_data(vae, config, x, y, tuple(data.image_shape), title, grid_size))


__all__ = ["Explorer", "explore", "decoder_program", "run_program", "page_data", "page_html",
           "MAX_SLIDER_DIMS", "DECODE_TOLERANCE"]
