"""Pure JAX math: V-trace, GAE, losses, action distributions. No I/O, no config."""

import types

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
    standardize,
    value_loss,
)
from jaxrl_impala.core.vtrace import VTraceReturns, vtrace

# Every public name imported above (the package root re-exports them lazily).
__all__ = sorted(
    name
    for name, value in globals().items()
    if not name.startswith("_") and not isinstance(value, types.ModuleType)
)
