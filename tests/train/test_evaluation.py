"""Greedy evaluation, compiled ahead (how DrivingEnv episodes ended: envs/test_driving.py)."""

import jax
from compiles import backend_compiles


def test_the_eval_step_compiled_ahead_serves_the_first_evaluation():

    from jaxrl_impala.actor.envs import env_spaces
    from jaxrl_impala.config import load_config
    from jaxrl_impala.learner import init_train_state, make_optimizer, train_state_shapes
    from jaxrl_impala.networks import make_policy
    from jaxrl_impala.train.evaluation import compile_eval_step, evaluate

    config = load_config(None, ["env.id=CartPole-v1", "network.hidden=[8]"])
    obs_space, action_space, _ = env_spaces(config)
    policy = make_policy(obs_space, action_space, config.network, config.learner.obs_norm)
    optimizer = make_optimizer(config, 1)
    compile_eval_step(policy, obs_space, train_state_shapes(policy, obs_space, optimizer), 3)
    state = jax.device_get(init_train_state(policy, obs_space, optimizer, jax.random.PRNGKey(0)))

    with backend_compiles() as compiled:
        returns = evaluate(config, policy, state.params, state.obs_stats, 3, seed=0)
    assert returns.shape == (3,) and (returns >= 8).all()  # CartPole lasts 8+ steps
    assert not [f for f in compiled if "step" in f], compiled
