"""Time per call of ``vtrace`` and ``gae`` against rlax, jitted, on the CPU.

    python benchmarks/core_bench.py [--quick] [--json PATH]

Both sides get the same time-major ``[T, B]`` float32 inputs already on the device, are
compiled and warmed up, then timed call by call (``block_until_ready``); the table shows
the median time per call and ``ratio = ours / rlax`` (below 1: ours is faster). rlax's
functions take one ``[T]`` column, so the peer is ``jax.vmap`` of them over ``B``, which is
how rlax is meant to be batched. Outputs are checked to agree before anything is timed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxrl_impala import gae, vtrace

try:
    import rlax
except ImportError:  # pragma: no cover - bench-only dependency
    sys.exit("core_bench needs rlax: pip install -e '.[bench]'")

SHAPES = [(128, 256), (20, 32)]


def make_inputs(t: int, b: int, seed: int = 0) -> dict[str, jax.Array]:
    rng = np.random.default_rng(seed)
    done = rng.random((t, b)) < 0.05
    inputs = {
        "log_rhos": rng.normal(0.0, 0.5, (t, b)),
        "discounts": 0.99 * (1.0 - done),
        "rewards": rng.normal(size=(t, b)),
        "values": rng.normal(size=(t, b)),
        "bootstrap_value": rng.normal(size=(b,)),
    }
    return {k: jnp.asarray(v, jnp.float32) for k, v in inputs.items()}


@jax.jit
def ours_vtrace(log_rhos, discounts, rewards, values, bootstrap_value):
    return vtrace(log_rhos, discounts, rewards, values, bootstrap_value)


@jax.jit
def rlax_vtrace(log_rhos, discounts, rewards, values, bootstrap_value):
    v_t = jnp.concatenate([values[1:], bootstrap_value[None]], axis=0)

    def column(v_tm1, v_t, r_t, discount_t, log_rho):
        out = rlax.vtrace_td_error_and_advantage(
            v_tm1, v_t, r_t, discount_t, jnp.exp(log_rho), lambda_=1.0
        )
        return out.errors + v_tm1, out.pg_advantage

    return jax.vmap(column, in_axes=1, out_axes=1)(values, v_t, rewards, discounts, log_rhos)


@jax.jit
def ours_gae(log_rhos, discounts, rewards, values, bootstrap_value):
    del log_rhos
    return gae(discounts, rewards, values, bootstrap_value, 0.95).advantages


@jax.jit
def rlax_gae(log_rhos, discounts, rewards, values, bootstrap_value):
    del log_rhos
    all_values = jnp.concatenate([values, bootstrap_value[None]], axis=0)

    def column(r_t, discount_t, v):
        return rlax.truncated_generalized_advantage_estimation(r_t, discount_t, 0.95, v)

    return jax.vmap(column, in_axes=1, out_axes=1)(rewards, discounts, all_values)


def time_calls(fn, inputs, calls: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        jax.block_until_ready(fn(**inputs))
    samples = []
    for _ in range(calls):
        start = time.perf_counter()
        jax.block_until_ready(fn(**inputs))
        samples.append(time.perf_counter() - start)
    return samples


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer calls (a smoke run)")
    parser.add_argument(
        "--json", default="benchmarks/results/core_bench.json", help="where to write results"
    )
    args = parser.parse_args(argv)
    calls, warmup, rounds = (50, 5, 3) if args.quick else (500, 50, 5)

    pairs = {"vtrace": (ours_vtrace, rlax_vtrace), "gae": (ours_gae, rlax_gae)}
    rows = []
    for name, (ours, peer) in pairs.items():
        for t, b in SHAPES:
            inputs = make_inputs(t, b)
            np.testing.assert_allclose(
                np.asarray(jax.tree.leaves(ours(**inputs))[0]),
                np.asarray(jax.tree.leaves(peer(**inputs))[0]),
                rtol=1e-4,
                atol=1e-4,
                err_msg=f"{name} disagrees with rlax at [{t}, {b}]",
            )
            ours_s, peer_s = [], []
            # Interleave rounds so that load changes on a shared machine hit both sides.
            for _ in range(rounds):
                ours_s += time_calls(ours, inputs, calls // rounds, warmup)
                peer_s += time_calls(peer, inputs, calls // rounds, warmup)
            ours_med, peer_med = statistics.median(ours_s), statistics.median(peer_s)
            rows.append(
                {
                    "fn": name,
                    "T": t,
                    "B": b,
                    "ours_us": ours_med * 1e6,
                    "rlax_us": peer_med * 1e6,
                    "ratio": ours_med / peer_med,
                    "ours_samples_s": ours_s,
                    "rlax_samples_s": peer_s,
                }
            )

    print(f"{'fn':<8}{'[T, B]':<12}{'ours (us)':>12}{'rlax (us)':>12}{'ratio':>8}")
    for r in rows:
        shape = f"[{r['T']}, {r['B']}]"
        print(
            f"{r['fn']:<8}{shape:<12}{r['ours_us']:>12.1f}{r['rlax_us']:>12.1f}{r['ratio']:>8.2f}"
        )

    result = {
        "benchmark": "core_bench",
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpu_count": os.cpu_count(),
            "devices": [str(d) for d in jax.devices()],
        },
        "versions": {
            "python": platform.python_version(),
            "jax": jax.__version__,
            "rlax": getattr(rlax, "__version__", "unknown"),
            "numpy": np.__version__,
        },
        "config": {"calls": calls, "warmup": warmup, "rounds": rounds, "dtype": "float32"},
        "results": rows,
    }
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    print(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()
