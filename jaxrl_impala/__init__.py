"""jaxrl_impala: IMPALA / APPO / PPO actor-learner training in JAX.

The public API is what ``__all__`` lists; everything else is an implementation detail.
"""

from jaxrl_impala.core import (
    Categorical,
    DiagGaussian,
    GAEReturns,
    MultiCategorical,
    VTraceReturns,
    appo_loss,
    distribution_for_space,
    entropy_loss,
    explained_variance,
    gae,
    impala_pg_loss,
    lambda_returns,
    ppo_loss,
    ppo_policy_loss,
    value_loss,
    vtrace,
)

__version__ = "0.1.0"

__all__ = [
    "Categorical",
    "DiagGaussian",
    "GAEReturns",
    "MultiCategorical",
    "VTraceReturns",
    "appo_loss",
    "distribution_for_space",
    "entropy_loss",
    "explained_variance",
    "gae",
    "impala_pg_loss",
    "lambda_returns",
    "ppo_loss",
    "ppo_policy_loss",
    "value_loss",
    "vtrace",
]
