"""The ``[evaluate]`` table of a recipe: how the test split is scored after training."""

from __future__ import annotations

from dataclasses import dataclass

from pyro_vae.config.checks import _choice, _positive

#: ``[evaluate] scoring``: how much of the test split the end of training scores
#: (:mod:`pyro_vae.scoring`).
SCORING_MODES = ("auto", "full")


@dataclass
class EvaluateConfig:
    """The test-set evaluation written to ``summary.json`` at the end of training."""

    #: Importance samples K per datapoint for log p(x).
    num_samples: int = 5000
    #: How much the final scoring of a training run does (:mod:`pyro_vae.scoring`): ``auto``
    #: keeps its cost to about the training's time (fewer samples, then the first test images
    #: only, where num_samples on every test image would take longer); ``full`` scores every
    #: test image with num_samples, the papers' protocol, and says first how long it will take.
    scoring: str = "auto"
    #: Largest number of decoded samples held in memory at once (K × datapoints per chunk);
    #: "auto" fills half the free memory of a CUDA device (20,000 on a CPU).
    max_chunk: int | str = 20_000
    #: Labelled models (cvae, m2): conditional samples per label whose label fidelity is
    #: measured at the end of training (pyro_vae.fidelity); 0 skips the measurement.
    label_fidelity_samples: int = 100
    #: The latent map (latent.png) of a code with more than 2 dimensions: ``tsne`` (t-SNE of
    #: 1,000 test encodings, a few seconds) or ``pca`` (first two principal components).
    latent_map: str = "tsne"

    def validate(self) -> None:
        _positive("evaluate", "num_samples", self.num_samples)
        _positive("evaluate", "label_fidelity_samples", self.label_fidelity_samples,
                  allow_zero=True)
        _choice("evaluate", "latent_map", self.latent_map, ("tsne", "pca"))
        _choice("evaluate", "scoring", self.scoring, SCORING_MODES)
        if isinstance(self.max_chunk, str):
            _choice("evaluate", "max_chunk", self.max_chunk, ("auto",))
        else:
            _positive("evaluate", "max_chunk", self.max_chunk)
