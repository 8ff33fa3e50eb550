"""Training: the loop (`loop`), the setup every entry point shares (`setup`), evaluation
(`evaluation`), the wiring of actors, transport and learner (`trainer`), and the CLI:

    python -m jaxrl_impala.train --config configs/driving.yaml [--set KEY=VALUE ...]
    python -m jaxrl_impala.train --resume RUN_DIR [--set train.total_env_steps=...]
    python -m jaxrl_impala.train --config configs/cartpole.yaml --print-config

Importing this package imports no JAX (the trainer starts its actors first).
"""
