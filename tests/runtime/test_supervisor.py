"""The actor supervisor: each actor's environment (CPU pinning, turns)."""

import pytest


@pytest.mark.parametrize(
    "num_actors, actor_cpus, own", [(2, [1], False), (2, [2, 3], True), (2, None, False)]
)
def test_actors_take_turns_unless_each_has_a_cpu(tmp_path, num_actors, actor_cpus, own):
    from jaxrl_impala.config import load_config
    from jaxrl_impala.runtime.cpus import ACTOR_CPU_ENV, ACTOR_OWN_CPU_ENV
    from jaxrl_impala.runtime.supervisor import ActorSupervisor

    config = load_config(None, [f"actors.num={num_actors}"])
    supervisor = ActorSupervisor(config, tmp_path, actor_cpus=actor_cpus)
    for i in range(num_actors):
        env = supervisor.actor_env(i)
        assert (env.get(ACTOR_OWN_CPU_ENV) == "1") == own
        assert env.get(ACTOR_CPU_ENV) == (
            str(actor_cpus[i % len(actor_cpus)]) if actor_cpus else None
        )
