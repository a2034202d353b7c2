"""Two priors, each one class plus its registration; nothing else in pyro-vae changes.

``student_t`` is a prior p(z) for any model; ``class_means`` is a label-conditional prior p(z|y)
for the labelled kinds (``cvae``, ``m2``)."""

import pyro.distributions as dist
import torch
from torch import nn

from pyro_vae.errors import ConfigError
from pyro_vae.options import Option
from pyro_vae.priors import Prior
from pyro_vae.registry import PRIORS


class StudentTPrior(Prior):
    """p(z) = Π_d StudentT(z_d; ν, 0, 1): ν fixed, or learned as ν = 1 + softplus(a)."""

    def __init__(self, latent_dim: int, df: float = 3.0, learn_df: bool = True):
        super().__init__(latent_dim)
        raw = torch.log(torch.expm1(torch.tensor(float(df) - 1.0)))  # ν = 1 + softplus(a)
        if learn_df:
            self.raw_df = nn.Parameter(raw)
        else:
            self.register_buffer("raw_df", raw)

    @property
    def df(self) -> torch.Tensor:
        return 1.0 + nn.functional.softplus(self.raw_df)

    def forward(self, batch_shape, device, dtype):
        zeros = torch.zeros(*batch_shape, self.latent_dim, device=device, dtype=dtype)
        return dist.StudentT(self.df.to(dtype), zeros, 1.0).to_event(1)


@PRIORS.register("student_t", help="Student-t with learned degrees of freedom", options={
    "df": Option(3.0, "degrees of freedom ν (where it starts, when learned)",
                 check=lambda df: None if df > 1 else "ν must exceed 1 (a finite mean)"),
    "learn_df": Option(True, "learn ν by gradient (false: keep it fixed)")})
def build(config, context):
    return StudentTPrior(config.latent_dim, context.options["df"], context.options["learn_df"])


class ClassMeansPrior(Prior):
    """A label-conditional prior p(z|y) = N(z; m_y, I), one learned mean per class.

    Label-conditional kinds (``cvae``, ``m2``) call ``forward`` with the labels of the batch; the
    labels may carry enumeration dimensions on their left (M2 sums y out with TraceEnum_ELBO),
    so the distribution's batch shape is the labels' shape. Without labels it is the label-free
    marginal p(z) = (1/C) Σ_y N(z; m_y, I). The registration below declares the capability
    ``label_conditional``; the factory reads the number of classes from ``context.num_classes``.
    """

    #: ``forward`` takes the labels y of the batch and gives p(z|y).
    label_conditional = True

    def __init__(self, latent_dim: int, num_classes: int):
        super().__init__(latent_dim)
        self.means = nn.Parameter(0.1 * torch.randn(num_classes, latent_dim))

    def forward(self, batch_shape, device, dtype, labels=None):
        means = self.means.to(device=device, dtype=dtype)
        if labels is None:
            mixing = dist.Categorical(logits=torch.zeros(len(means), device=device, dtype=dtype))
            classes = dist.Normal(means, 1.0).to_event(1)
            return dist.MixtureSameFamily(mixing, classes).expand(batch_shape)
        return dist.Normal(means[labels], 1.0).to_event(1)


@PRIORS.register("class_means", help="p(z|y) = N(m_y, I), a learned mean per class",
                 capabilities={"label_conditional"})
def build_class_means(config, context):
    if context.num_classes is None:
        raise ConfigError('prior = "class_means" is a prior per label, p(z|y), and this model '
                          'has no labels; use it with kind = "cvae" or "m2", or choose another '
                          "prior for an unlabelled model.")
    return ClassMeansPrior(config.latent_dim, context.num_classes)
