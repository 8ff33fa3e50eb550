"""The actor side: the env factory (`envs`), the rollout (`rollout`), the process loop
(`process`) and its CLI (``python -m jaxrl_impala.actor``). Nothing here imports the learner.

Importing this package imports no JAX: the CLI pins its CPU and sets ``JAX_PLATFORMS`` first.
"""
