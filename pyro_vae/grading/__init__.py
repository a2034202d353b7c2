"""Graders of the exercise notebooks (``notebooks/exercises/``): check functions that compare a
student's function with exact answers and say what is wrong in words.

Each grader takes the student's function (or, for the prior, its registered name) and returns
a :class:`GradeResult` whose text is the verdict; it never prints. The exact answers come from
``torch.distributions`` (log-densities, ``kl_divergence``) and from the linear-Gaussian model
(:mod:`pyro_vae.toy`), whose log p(x), posterior, ELBO and ELBO gradient are known in closed form.

==========================================  ====================================================
exercise                                    grader
==========================================  ====================================================
1  the Gaussian VAE's ELBO by hand           :func:`check_log_normal`, :func:`check_elbo`
2  the closed-form Gaussian KL               :func:`check_gaussian_kl`,
                                             :func:`check_kl_between_gaussians`
3  the IWAE bound                            :func:`check_log_mean_exp`, :func:`check_iwae_bound`
4  a prior of one's own, as a plugin         :func:`check_prior_plugin`
5  the score-function gradient               :func:`check_score_function`,
                                             :func:`check_score_function_baseline`
==========================================  ====================================================

An instructor grades students' notebooks with :func:`grade_notebook` / :func:`grade_notebooks`.
"""

from pyro_vae.grading.elbo import check_elbo, check_log_normal
from pyro_vae.grading.iwae import check_iwae_bound, check_log_mean_exp
from pyro_vae.grading.kl import check_gaussian_kl, check_kl_between_gaussians
from pyro_vae.grading.notebook import GradeBook, NotebookGrade, grade_notebook, grade_notebooks
from pyro_vae.grading.prior import check_prior_plugin
from pyro_vae.grading.result import Check, GradeResult
from pyro_vae.grading.score import check_score_function, check_score_function_baseline

__all__ = [
    "check_log_normal", "check_elbo", "check_gaussian_kl", "check_kl_between_gaussians",
    "check_log_mean_exp", "check_iwae_bound", "check_prior_plugin", "check_score_function",
    "check_score_function_baseline", "grade_notebook", "grade_notebooks", "GradeResult",
    "Check", "NotebookGrade", "GradeBook",
]
