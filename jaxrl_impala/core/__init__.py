"""Pure JAX math: V-trace, GAE, losses, action distributions. No I/O, no config."""

from jaxrl_impala.core.advantages import GAEReturns, gae, lambda_returns
from jaxrl_impala.core.distributions import (
    Categorical,
    DiagGaussian,
    MultiCategorical,
    distribution_for_space,
)
from jaxrl_impala.core.losses import (
    appo_loss,
    entropy_loss,
    explained_variance,
    impala_pg_loss,
    ppo_loss,
    ppo_policy_loss,
    value_loss,
)
from jaxrl_impala.core.vtrace import VTraceReturns, vtrace

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
