"""Faults: find which term of the objective went NaN or infinite, and say so; refuse sizes
that cannot fit in memory before allocating them, and explain an allocation that failed.

Memory estimates are lower bounds (weights, gradients and Adam's two moments of the largest
layers; the decoded images of one step or evaluation chunk), so a setting is refused only when
it cannot fit; anything the estimate misses ends in :func:`out_of_memory_error` instead.
"""

from __future__ import annotations

import math
import re
import resource
from typing import TYPE_CHECKING

import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample

from pyro_vae.errors import ConfigError, PyroVAEError, TrainingError
from pyro_vae.registry import MODEL_KINDS

if TYPE_CHECKING:
    from pyro_vae.config import Config, ModelConfig

FLOAT_BYTES = 4
#: Copies of each trained weight: the weight, its gradient and Adam's two moments.
TRAINING_COPIES = 4
#: Text of the allocation failures torch raises (CPU allocator, CUDA caching allocator).
_OUT_OF_MEMORY = re.compile(r"can't allocate memory|out of memory|not enough memory|"
                            r"DefaultCPUAllocator", re.IGNORECASE)

_TERMS = {("model", "x"): "log p(x|z), the likelihood", ("model", "z"): "log p(z), the prior",
          ("guide", "z"): "log q(z|x), the encoder's posterior"}


def nonfinite_parameters(module: torch.nn.Module, gradients: bool = False) -> list[str]:
    """Names of parameters whose values (or gradients) hold NaN or ±inf."""
    bad = []
    for name, param in module.named_parameters():
        tensor = param.grad if gradients else param
        if tensor is not None and not torch.isfinite(tensor).all():
            bad.append(name)
    return bad


@torch.no_grad()
def nonfinite_terms(vae, x: torch.Tensor) -> list[str]:
    """The model and guide sites whose log-density (or sampled value) is not finite on ``x``."""
    guide_trace = poutine.trace(vae.guide).get_trace(x)
    model_trace = poutine.trace(poutine.replay(vae.model, trace=guide_trace)).get_trace(x)
    found = []
    for role, trace in (("guide", guide_trace), ("model", model_trace)):
        for site in trace.nodes.values():
            if site["type"] != "sample" or site_is_subsample(site):
                continue
            log_prob = site["fn"].log_prob(site["value"])
            broken = ~torch.isfinite(log_prob)
            if broken.any() or not torch.isfinite(site["value"]).all():
                term = _TERMS.get((role, site["name"]), f"site {site['name']!r} in the {role}")
                found.append(f"{term} (not finite for {int(broken.sum())} of "
                             f"{log_prob.numel()} datapoints)")
    return found


def nonfinite_loss_error(vae, x: torch.Tensor, loss: float, grad_norm: float, epoch: int,
                         step: int, last_good: str, resumable: bool = True,
                         rolled_back: bool = False) -> TrainingError:
    """A one-paragraph :class:`TrainingError` naming the step, the bad terms and what to do."""
    what = f"the loss became {loss:g}" if loss != loss or abs(loss) == float("inf") else \
        f"the gradient norm became {grad_norm:g} (loss {loss:g})"
    try:
        terms = nonfinite_terms(vae, x)
    except (PyroVAEError, RuntimeError, ValueError):
        # The batch alone cannot be replayed: a labelled model's guide needs the batch's labels,
        # and M2's q(y|x) cannot be sampled from non-finite logits. The parameters still tell.
        terms = []
    params = nonfinite_parameters(vae) or nonfinite_parameters(vae, gradients=True)
    detail = []
    if terms:
        detail.append("bad terms: " + "; ".join(terms))
    if params:
        shown = ", ".join(params[:4]) + (" …" if len(params) > 4 else "")
        detail.append(f"non-finite parameters or gradients: {shown}")
    return TrainingError(
        f"{what} at epoch {epoch}, step {step}"
        + (f" ({'; '.join(detail)})" if detail else "")
        + f". The parameters were not updated with it. The last good state is {last_good}. "
        + ("Lower the learning rate and continue with `pyro-vae train --out RUN_DIR --resume "
           "--lr SMALLER`" if resumable else
           "Nothing was saved yet: train again with a smaller --lr into the same --out")
        + ("; rolling back and halving the rate did not help either, so check the data and "
           "the model." if rolled_back else
           ", or set [train] on_nan = \"rollback\" (--on-nan rollback) to have training step "
           "back and halve the rate by itself.")
    )


# --- memory ------------------------------------------------------------------------------------

def format_bytes(count: float) -> str:
    """``1.5 GB``-style sizes (powers of 1000), up to petabytes, then powers of ten."""
    for unit, size in (("PB", 1e15), ("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= size:
            return f"{count / size:.3g} {unit}" if count < 1e18 else f"{count:.2e} bytes"
    return f"{count:.0f} bytes"


def _proc_number(path: str, pattern: str) -> int | None:
    try:
        with open(path, encoding="ascii") as handle:
            found = re.search(pattern, handle.read())
    except OSError:
        return None
    return int(found.group(1)) if found else None


def available_memory(device: torch.device | str = "cpu") -> int | None:
    """Bytes this process may still allocate on ``device`` (``None`` where unknown): a CUDA
    device's free memory; on the CPU the least of the system's available memory, the address
    space left under ``ulimit -v`` and the room left in the cgroup's memory limit."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    limits = []
    available_kb = _proc_number("/proc/meminfo", r"MemAvailable:\s+(\d+)")
    if available_kb is not None:
        limits.append(available_kb * 1024)
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    used_kb = _proc_number("/proc/self/status", r"VmSize:\s+(\d+)")
    if soft != resource.RLIM_INFINITY and used_kb is not None:
        limits.append(max(0, soft - used_kb * 1024))
    for limit_path, usage_path in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        limit = _proc_number(limit_path, r"^(\d+)")
        usage = _proc_number(usage_path, r"^(\d+)")
        if limit is not None and usage is not None and limit < 2 ** 60:
            limits.append(max(0, limit - usage))
    return min(limits) if limits else None


def check_memory(what: str, needed: float, device: torch.device | str, advice: str) -> None:
    """Refuse (:class:`ConfigError`) a setting whose lower-bound memory need ``needed`` exceeds
    what ``device`` has available."""
    available = available_memory(device)
    if available is not None and needed > available:
        where = "on this GPU" if torch.device(device).type == "cuda" else "to this process"
        raise ConfigError(f"{what} needs at least {format_bytes(needed)} of memory, but "
                          f"{format_bytes(available)} is available {where}; {advice}")


def _prior_components(model: "ModelConfig") -> int:
    if model.prior not in ("mixture", "vamp"):
        return 0
    return model.options_of("prior").get("components") or (10 if model.prior == "mixture"
                                                            else 500)


def model_parameter_count(model: "ModelConfig", image_shape: tuple[int, ...]) -> int:
    """A lower bound on the weights of a model: the layers into and out of z (each at least
    as wide as the narrowest hidden layer, or 32 channels for the conv pair), the layers into
    and out of the pixels of an MLP, and the prior's own parameters."""
    pixels, latent = math.prod(image_shape), model.latent_dim
    hidden = list(model.hidden_dims) or [1]
    width = min(hidden) if model.network == "mlp" else 32
    count = 3 * latent * width  # encoder head (loc and scale), decoder input
    if model.network == "mlp":
        count += 2 * pixels * hidden[0]
    components = _prior_components(model)
    count += components * (2 * latent + 1) if model.prior == "mixture" else components * pixels
    if "labels" in MODEL_KINDS.capabilities(model.kind):  # one_hot(y) into encoder and decoder
        count += 2 * model.num_classes * width
    return count


def decoded_bytes(images: float, image_shape: tuple[int, ...], latent_dim: int) -> float:
    """Memory of ``images`` decoded images and their codes (output, z and its noise)."""
    return images * (math.prod(image_shape) + 2 * latent_dim) * FLOAT_BYTES


def check_training_memory(config: "Config", image_shape: tuple[int, ...], num_test: int,
                          device: torch.device | str = "cpu",
                          labels_present: int | None = None) -> None:
    """Refuse a training configuration that cannot fit in memory (see the module docstring).
    ``labels_present``: how many distinct labels the training split has (the labels whose
    fidelity is measured; default all ``num_classes``)."""
    model, train = config.model, config.train
    weights = model_parameter_count(model, image_shape) * FLOAT_BYTES * TRAINING_COPIES
    step = decoded_bytes(train.batch_size * train.particles, image_shape, model.latent_dim)
    if model.prior == "mixture":  # every z scored under every component
        step += train.batch_size * train.particles * _prior_components(model) * FLOAT_BYTES
    chunk = config.evaluate.max_chunk if isinstance(config.evaluate.max_chunk, int) else 20_000
    evaluation = decoded_bytes(min(chunk, max(1, num_test) * config.evaluate.num_samples),
                               image_shape, model.latent_dim)
    check_memory("this configuration (latent_dim, particles, prior components, batch size, "
                 "[evaluate] max_chunk and a labelled model's num_classes)",
                 weights + max(step, evaluation), device,
                 "lower --latent-dim, --particles, --prior-components, --batch-size, [evaluate] "
                 "max_chunk or [kind] num_classes.")
    samples = config.evaluate.label_fidelity_samples
    if samples and "labels" in MODEL_KINDS.capabilities(model.kind):
        # The end-of-run fidelity decodes every label's samples at once: output, mean, draw.
        labels = min(model.num_classes, labels_present or model.num_classes)
        fidelity = 3 * decoded_bytes(labels * samples, image_shape, model.latent_dim)
        check_memory(f"[evaluate] label_fidelity_samples = {samples} (per label, "
                     f"{labels} labels)", weights + fidelity, device,
                     "lower label_fidelity_samples (100 gives a standard error near 1 %), or "
                     "0 to skip the measurement.")


def is_out_of_memory(error: BaseException) -> bool:
    """An allocation failure: ``MemoryError``, ``torch.OutOfMemoryError`` or the CPU
    allocator's ``RuntimeError``."""
    if isinstance(error, MemoryError):
        return True
    return isinstance(error, RuntimeError) and bool(_OUT_OF_MEMORY.search(str(error)))


def out_of_memory_error(error: BaseException, command: str) -> PyroVAEError:
    """The one-paragraph message for an allocation that failed while running ``command``."""
    first = (str(error).strip().splitlines() or [type(error).__name__])[0]
    first = re.sub(r"\s+", " ", first)[:200]
    return PyroVAEError(
        f"`pyro-vae {command}` ran out of memory ({first}). A setting asks for more memory "
        "than this machine has: lower the sizes involved (--latent-dim, --particles, "
        "--prior-components, --batch-size, --n, --num-samples or --eval-samples, [evaluate] "
        "max_chunk) or run where there is more memory. Every file already written is complete"
        + (" and every completed epoch is kept (continue with --resume)." if command == "train"
           else "."))
