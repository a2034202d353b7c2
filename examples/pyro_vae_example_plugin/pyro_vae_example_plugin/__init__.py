"""An example pyro-vae plugin package.

Importing it registers a prior (``student_t``), a label-conditional prior p(z|y)
(``class_means``, for ``cvae`` and ``m2``), a likelihood (``laplace``) and a model kind
(``tied_vae``, a model/guide pair of its own) and a model kind with a global latent
variable (``hyperprior_vae``: z ~ N(0, s²I) with a LogNormal hyperprior on s). Use it from a recipe::

    plugins = ["pyro_vae_example_plugin"]

    [model]
    prior = "student_t"

or with ``--plugin pyro_vae_example_plugin`` on any command, or install the package (its
``pyproject.toml`` declares the ``pyro_vae.plugins`` entry point).
"""

from pyro_vae_example_plugin import hyperprior, likelihoods, models, priors  # noqa: F401
