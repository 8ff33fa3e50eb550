"""The learner: TrainState, the optimiser, the device mesh, the one compiled update, and the
host side that feeds it (batches) and reads it (the parameter publisher)."""

from jaxrl_impala.learner.mesh import make_mesh
from jaxrl_impala.learner.update import (
    TrainState,
    init_train_state,
    make_optimizer,
    make_update,
    stratified_permutation,
    train_state_shapes,
)

__all__ = [
    "TrainState",
    "init_train_state",
    "make_mesh",
    "make_optimizer",
    "make_update",
    "stratified_permutation",
    "train_state_shapes",
]
