"""Soak test: a long DrivingEnv run with actors killed at random, watched for leaks.

    python benchmarks/soak.py                       # 30 minutes, configs/driving.yaml
    python benchmarks/soak.py --minutes 3 --kill-every-s 30 --json /tmp/soak.json

Runs ``python -m jaxrl_impala.train`` as a user would and, every ``--sample-every-s``
seconds, records the resident memory and open file descriptors of the trainer and of every
actor, the bytes of the run's ``/dev/shm`` segments, the queue depth and the env steps. Actors
are SIGKILLed at random (exponential gaps averaging ``--kill-every-s``). When the run reaches
its step budget before the time is up it is resumed with a larger budget (``--resume``), so a
soak also exercises checkpoint and resume. At the end the run is stopped with SIGTERM.

Verdict (exit 1 when any check fails):
  * memory: after the warm-up, the median total RSS of the last quarter is within 10% (or
    100 MB) of the second quarter's;
  * descriptors: likewise within 8;
  * /dev/shm: the run's segments keep their size; none is left once the trainer has exited;
  * checkpoints: every checkpoint dir verifies (sha256) and the last one holds the final
    ``env_steps``; none was lost;
  * every killed actor was restarted (``actor_restarts`` >= kills) and the run exited 0;
  * with ``--compare-with``: the learning curve, judged against a twin without kills.

The learning-curve check needs a twin run under the same load, so run both at once, then
compare (the kill-free twin is the same soak with ``--kill-every-s 0``):

    python benchmarks/soak.py --kill-every-s 0 --out /tmp/twin --json /tmp/twin.json \
        --png /tmp/twin.png &
    python benchmarks/soak.py --out /tmp/soak; wait
    python benchmarks/soak.py --compare-with /tmp/twin.json

Writes JSON (machine, versions, arguments, every sample, kills, verdict) and a PNG.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psutil
from _results import header, save_figure, write

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _tree(proc: psutil.Process) -> list[psutil.Process]:
    try:
        return [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return []


def _actors(proc: psutil.Process) -> list[psutil.Process]:
    out = []
    for p in _tree(proc)[1:]:
        try:
            if "jaxrl_impala.actor" in " ".join(p.cmdline()):
                out.append(p)
        except psutil.Error:
            pass
    return out


def _mem_fds(procs: list[psutil.Process]) -> tuple[float, int]:
    rss, fds = 0.0, 0
    for p in procs:
        try:
            rss += p.memory_info().rss / 2**20
            fds += p.num_fds()
        except psutil.Error:
            pass
    return rss, fds


def _shm(pid: int) -> tuple[int, int]:
    """(files, bytes) of the /dev/shm segments created by ``pid``."""
    files = list(Path("/dev/shm").glob(f"jri_{pid}_*"))
    return len(files), sum(f.stat().st_size for f in files if f.exists())


def _last_metrics(run_dir: Path) -> tuple[dict, list[dict]]:
    """The latest training record and every eval record."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return {}, []
    last, evals = {}, []
    for line in path.read_text().splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "eval_return_mean" in r:
            evals.append(r)
        elif "queue_depth" in r:
            last = r
    return last, evals


def _start(args, run_dir: Path, resume: bool, budget: int) -> subprocess.Popen:
    if resume:
        cmd = ["--resume", str(run_dir), "--set", f"train.total_env_steps={budget}"]
    else:
        cmd = ["--config", args.config, "--set", f"run.dir={run_dir}", *args.set]
        cmd += [f"train.checkpoint_every_s={args.checkpoint_every_s}"]
    log = open(run_dir.parent / "trainer.log", "a")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jaxrl_impala.train", *cmd],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    log.close()
    return proc


def _growth(series: list[float]) -> tuple[float, float, float]:
    """(median of the second quarter, median of the last quarter, difference)."""
    n = len(series)
    q2 = series[n // 4 : n // 2] or series
    q4 = series[3 * n // 4 :] or series
    a, b = statistics.median(q2), statistics.median(q4)
    return a, b, b - a


def mark_kills_while_finishing(kills: list[dict], samples: list[dict]) -> None:
    """Flag kills that landed after a segment reached its step budget (the trainer was
    already stopping its actors: nothing to restart)."""
    for k in kills:
        before = [s for s in samples if s["t"] <= k["t"] and s["env_steps"] is not None]
        after = [s for s in samples if s["t"] > k["t"] and s["env_steps"] is not None]
        k["while_finishing"] = bool(
            before
            and after
            and before[-1]["env_steps"] == after[0]["env_steps"]
            and not any(s["actor_restarts"] > before[-1]["actor_restarts"] for s in after[:6])
        )


def _sample(t: float, trainer: psutil.Process, pid: int, run_dir: Path, seen: set) -> dict:
    """One sample of the run's processes, shared memory and latest metrics; adds the
    checkpoints on disk to ``seen``."""
    from jaxrl_impala.io.checkpoints import Checkpointer

    procs = _tree(trainer)
    rss, fds = _mem_fds(procs)
    rss_l, fds_l = _mem_fds(procs[:1])
    shm_files, shm_bytes = _shm(pid)
    last, _ = _last_metrics(run_dir)
    ck = Checkpointer(run_dir).list() if (run_dir / "checkpoints").exists() else []
    seen.update(p.name for p in ck)
    return {
        "t": t,
        "rss_mb": rss,
        "rss_learner_mb": rss_l,
        "fds": fds,
        "fds_learner": fds_l,
        "processes": len(procs),
        "actors": len(_actors(trainer)),
        "shm_files": shm_files,
        "shm_bytes": shm_bytes,
        "queue_depth": last.get("queue_depth"),
        "env_steps": last.get("env_steps"),
        "sps": last.get("sps"),
        "actor_restarts": last.get("actor_restarts", 0),
    }


def _run(args, run_dir: Path, segment: int) -> dict:
    """Runs the trainer for ``--minutes``, killing actors and resuming at each budget;
    returns what was watched: samples, kills, resumes, checkpoints seen, exit codes, pids."""
    rng = random.Random(args.seed)
    end = time.monotonic() + args.minutes * 60
    budget = segment
    t0 = time.monotonic()
    next_kill = (
        t0 + args.warmup_s + rng.expovariate(1 / args.kill_every_s)
        if args.kill_every_s > 0
        else float("inf")  # a kill-free twin
    )
    proc = _start(args, run_dir, resume=False, budget=budget)
    trainer = psutil.Process(proc.pid)
    w = {"samples": [], "kills": [], "resumes": 0, "ckpts_seen": set(), "exit_codes": []}
    w["pids"] = [proc.pid]
    next_sample = t0
    try:
        while time.monotonic() < end:
            now = time.monotonic()
            code = proc.poll()
            if code is not None:  # the budget ran out: resume with a larger one
                w["exit_codes"].append(code)
                if code != 0:
                    print(f"soak: trainer exited {code}; see {run_dir.parent / 'trainer.log'}")
                    break
                budget += segment
                w["resumes"] += 1
                print(f"soak: budget reached, resuming to {budget} env steps", flush=True)
                proc = _start(args, run_dir, resume=True, budget=budget)
                trainer = psutil.Process(proc.pid)
                w["pids"].append(proc.pid)
                continue
            samples = w["samples"]
            finishing = bool(samples) and (samples[-1]["env_steps"] or 0) >= budget
            if args.kill_every_s > 0 and now >= next_kill and not finishing:
                # (not while the segment is finishing: its actors are being stopped anyway)
                victims = _actors(trainer)
                if victims:
                    v = rng.choice(victims)
                    try:
                        v.send_signal(signal.SIGKILL)
                        w["kills"].append({"t": now - t0, "pid": v.pid})
                        print(f"soak: t={now - t0:.0f}s killed actor pid {v.pid}", flush=True)
                    except psutil.Error:
                        pass
                next_kill = now + rng.expovariate(1 / args.kill_every_s)
            if now >= next_sample:
                next_sample = now + args.sample_every_s
                samples.append(_sample(now - t0, trainer, proc.pid, run_dir, w["ckpts_seen"]))
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                w["exit_codes"].append(proc.wait(120))
            except subprocess.TimeoutExpired:
                proc.kill()
                w["exit_codes"].append(proc.wait())
    return w


def soak(args) -> dict:
    from jaxrl_impala.config import load_config
    from jaxrl_impala.io.checkpoints import Checkpointer

    config = load_config(args.config, args.set)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    run_dir = out_dir / "run"
    if run_dir.exists():
        raise SystemExit(f"{run_dir} exists; pass another --out")
    print(f"soak: {args.minutes} min of {args.config}; outputs in {out_dir}", flush=True)
    w = _run(args, run_dir, config.train.total_env_steps)
    samples, kills, exit_codes = w["samples"], w["kills"], w["exit_codes"]
    time.sleep(1.0)
    leftover = [n.name for pid in w["pids"] for n in Path("/dev/shm").glob(f"jri_{pid}_*")]

    # --- checkpoints: all verify; the newest holds the final step count
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    final = [r for r in rows if r.get("final")]
    final_steps = final[-1]["env_steps"] if final else None
    bad, newest = [], None
    for path in Checkpointer(run_dir).list():
        try:
            newest, _ = Checkpointer.verify(path)
        except Exception as e:  # noqa: BLE001 - reported in the verdict
            bad.append(f"{path.name}: {e}")
    evals = [r for r in rows if "eval_return_mean" in r]
    restarts = max((r.get("actor_restarts", 0) for r in rows), default=0)
    mark_kills_while_finishing(kills, samples)

    # --- verdict (after the warm-up)
    steady = [s for s in samples if s["t"] >= args.warmup_s] or samples
    rss_a, rss_b, rss_d = _growth([s["rss_mb"] for s in steady])
    fd_a, fd_b, fd_d = _growth([s["fds"] for s in steady])
    shm_sizes = {s["shm_bytes"] for s in steady if s["shm_files"]}
    checks = {
        "memory_flat": rss_d <= max(0.10 * rss_a, 100.0),
        "fds_flat": fd_d <= 8,
        "shm_constant": len(shm_sizes) <= 1 * (w["resumes"] + 1),
        "no_shm_left": leftover == [],
        "checkpoints_intact": not bad and newest is not None and newest["env_steps"] == final_steps,
        "actors_restarted": restarts >= sum(not k.get("while_finishing") for k in kills),
        "clean_exit": all(c == 0 for c in exit_codes) and bool(exit_codes),
    }
    return {
        **header("soak", memory_gb=round(psutil.virtual_memory().total / 2**30, 1)),
        "args": vars(args),
        "passed": all(checks.values()),
        "checks": checks,
        "figures": {
            "rss_mb_second_quarter": rss_a,
            "rss_mb_last_quarter": rss_b,
            "fds_second_quarter": fd_a,
            "fds_last_quarter": fd_b,
            "kills": len(kills),
            "actor_restarts": restarts,
            "resumes": w["resumes"],
            "checkpoints_seen": len(w["ckpts_seen"]),
            "final_env_steps": final_steps,
            "bad_checkpoints": bad,
            "leftover_shm": leftover,
            "exit_codes": exit_codes,
        },
        "kills": kills,
        "samples": samples,
        "evals": [
            {
                "env_steps": r["env_steps"],
                "wall_time_s": r["wall_time_s"],
                "eval_return_mean": r["eval_return_mean"],
            }
            for r in evals
        ],  # fmt: skip
    }


def compare_curves(result: dict, twin: dict) -> dict:
    """The soak's greedy eval curve against a twin run without kills (``--kill-every-s 0``,
    run at the same time so both see the same load), point by point at equal env steps.

    Kills cost actor time, not learning: at equal env steps the curves should agree within
    their noise. The check fails when the soak's mean over the matched points is below the
    twin's by more than twice the standard error of the paired differences (eval points of
    one run are correlated, so that error is if anything optimistic: a strict check).
    """
    theirs = {e["env_steps"]: e["eval_return_mean"] for e in twin["evals"]}
    matched = [e for e in result["evals"] if e["env_steps"] in theirs]
    pairs = [(e["eval_return_mean"], theirs[e["env_steps"]]) for e in matched]
    if len(pairs) < 3:
        return {"matched_evals": len(pairs), "learning_curve_unaffected": False}
    diffs = [a - b for a, b in pairs]
    se = statistics.stdev(diffs) / len(diffs) ** 0.5
    mean_diff = statistics.fmean(diffs)
    return {
        "matched_evals": len(pairs),
        "matched_env_steps": [matched[0]["env_steps"], matched[-1]["env_steps"]],
        "soak_eval_mean": statistics.fmean(a for a, _ in pairs),
        "twin_eval_mean": statistics.fmean(b for _, b in pairs),
        "mean_difference": mean_diff,
        "difference_se": se,
        "twin_final_env_steps": twin["figures"]["final_env_steps"],
        "learning_curve_unaffected": mean_diff >= -2 * se,
    }


def plot(result: dict, path: Path, baseline: Path | None, twin: dict | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = result["samples"]
    t = [x["t"] / 60 for x in s]
    fig, ax = plt.subplots(2, 2, figsize=(12, 7))
    ax[0, 0].plot(t, [x["rss_mb"] for x in s], label="all processes")
    ax[0, 0].plot(t, [x["rss_learner_mb"] for x in s], label="trainer")
    ax[0, 0].set_ylabel("RSS (MB)")
    ax[0, 1].plot(t, [x["fds"] for x in s], label="all processes")
    ax[0, 1].plot(t, [x["fds_learner"] for x in s], label="trainer")
    ax[0, 1].set_ylabel("open file descriptors")
    ax[1, 0].plot(t, [x["shm_bytes"] / 2**20 for x in s], label="/dev/shm (MB)")
    ax[1, 0].plot(t, [x["queue_depth"] or 0 for x in s], label="queue depth")
    ax[1, 0].set_xlabel("minutes")
    for a in (ax[0, 0], ax[0, 1], ax[1, 0]):
        for k in result["kills"]:
            a.axvline(k["t"] / 60, color="red", alpha=0.25, lw=0.8)
        a.legend(loc="lower right", fontsize=8)
    e = result["evals"]
    ax[1, 1].plot(
        [x["env_steps"] / 1e6 for x in e], [x["eval_return_mean"] for x in e], label="soak"
    )
    b = None
    if twin is not None:
        b = twin["evals"]
    elif baseline is not None:
        rows = [json.loads(x) for x in (baseline / "metrics.jsonl").read_text().splitlines()]
        b = [r for r in rows if "eval_return_mean" in r]
    if b is not None:
        ax[1, 1].plot(
            [x["env_steps"] / 1e6 for x in b],
            [x["eval_return_mean"] for x in b],
            label="no kills",
            alpha=0.7,
        )
    ax[1, 1].set_xlabel("env steps (M)")
    ax[1, 1].set_ylabel("greedy eval return")
    ax[1, 1].legend(fontsize=8)
    fig.suptitle(
        f"soak: {len(result['kills'])} actor kills (red lines), "
        f"{'passed' if result['passed'] else 'FAILED'}"
    )
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="configs/driving.yaml")
    p.add_argument("--set", nargs="*", action="extend", default=[], help="config overrides")
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--kill-every-s", type=float, default=120.0, help="mean gap between kills")
    p.add_argument("--sample-every-s", type=float, default=5.0)
    p.add_argument("--warmup-s", type=float, default=120.0, help="no kills, no verdict before")
    p.add_argument("--checkpoint-every-s", type=float, default=60.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=f"/tmp/jaxrl_impala_soak_{os.getpid()}")
    p.add_argument("--baseline", type=Path, help="a run dir without kills, for the eval plot")
    p.add_argument("--json", default="benchmarks/results/soak.json")
    p.add_argument("--png", default="benchmarks/results/soak.png")
    p.add_argument(
        "--compare-with",
        type=Path,
        metavar="TWIN_JSON",
        help="no soak: judge the learning curve of --json's soak against this twin's JSON "
        "(a soak with --kill-every-s 0 run at the same time), then rewrite --json and --png",
    )
    args = p.parse_args(argv)
    if args.compare_with is not None:
        result = json.loads((ROOT / args.json).read_text())
        twin = json.loads(args.compare_with.read_text())
        result["learning_curve"] = compare_curves(result, twin)
        result["checks"]["learning_curve_unaffected"] = result["learning_curve"].pop(
            "learning_curve_unaffected"
        )
        result["passed"] = all(result["checks"].values())
        result["twin"] = {k: twin[k] for k in ("args", "checks", "figures", "evals")}
        (ROOT / args.json).write_text(json.dumps(result, indent=1))
        plot(result, ROOT / args.png, None, twin)
        c = result["learning_curve"]
        print(
            f"learning curve over {c['matched_evals']} matched evals: soak "
            f"{c.get('soak_eval_mean', float('nan')):.1f}, no kills "
            f"{c.get('twin_eval_mean', float('nan')):.1f}, difference "
            f"{c.get('mean_difference', float('nan')):+.1f} +- "
            f"{c.get('difference_se', float('nan')):.1f} (s.e.): "
            f"{'ok' if result['checks']['learning_curve_unaffected'] else 'FAIL'}"
        )
        return 0 if result["passed"] else 1
    result = soak(args)
    write(result, ROOT / args.json, ROOT / args.png, lambda r, png: plot(r, png, args.baseline))
    f = result["figures"]
    print(
        f"soak {'PASSED' if result['passed'] else 'FAILED'}: {f['kills']} kills, "
        f"{f['actor_restarts']} restarts, {f['resumes']} resumes; RSS "
        f"{f['rss_mb_second_quarter']:.0f} -> {f['rss_mb_last_quarter']:.0f} MB, fds "
        f"{f['fds_second_quarter']:.0f} -> {f['fds_last_quarter']:.0f}; "
        f"{f['checkpoints_seen']} checkpoints seen, final env_steps {f['final_env_steps']}"
    )
    for name, ok in result["checks"].items():
        print(f"  {'ok  ' if ok else 'FAIL'} {name}")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
