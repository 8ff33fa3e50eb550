"""Slow, obvious numpy references, written the way the papers write them.

Loops over t and b on purpose: they are the spec the JAX code is checked against.
"""

from __future__ import annotations

import numpy as np


def _clip(x: float, threshold: float | None) -> float:
    return x if threshold is None else min(threshold, x)


def vtrace(
    log_rhos,
    discounts,
    rewards,
    values,
    bootstrap_value,
    clip_rho_threshold=1.0,
    clip_c_threshold=1.0,
    clip_pg_rho_threshold=1.0,
    lambda_=1.0,
):
    """O(T^2) V-trace, eq. (1) of arXiv:1802.01561 with c_i = lambda * min(c_bar, rho_i)."""
    log_rhos, discounts, rewards, values = (
        np.asarray(x, np.float64) for x in (log_rhos, discounts, rewards, values)
    )
    bootstrap_value = np.asarray(bootstrap_value, np.float64)
    t_len, b_len = rewards.shape
    vs = np.zeros((t_len, b_len))
    pg = np.zeros((t_len, b_len))
    for b in range(b_len):
        v = np.append(values[:, b], bootstrap_value[b])  # V(x_0) .. V(x_T)
        rho = np.exp(log_rhos[:, b])
        for s in range(t_len):
            total = 0.0
            for t in range(s, t_len):
                trace = 1.0
                for i in range(s, t):
                    trace *= discounts[i, b] * lambda_ * _clip(rho[i], clip_c_threshold)
                delta = _clip(rho[t], clip_rho_threshold) * (
                    rewards[t, b] + discounts[t, b] * v[t + 1] - v[t]
                )
                total += trace * delta
            vs[s, b] = v[s] + total
        for s in range(t_len):
            v_next = vs[s + 1, b] if s + 1 < t_len else bootstrap_value[b]
            pg[s, b] = _clip(rho[s], clip_pg_rho_threshold) * (
                rewards[s, b] + discounts[s, b] * v_next - v[s]
            )
    return vs, pg


def vtrace_episodes(
    log_rhos,
    rewards,
    terminated,
    truncated,
    truncation_value,
    values,
    bootstrap_value,
    gamma,
    *,
    clip_rho_threshold=1.0,
    clip_c_threshold=1.0,
    clip_pg_rho_threshold=1.0,
    lambda_=1.0,
):
    """O(T^2) V-trace from the raw episode flags, not from discounts: the trace from step s
    runs to the end of s's episode inside the unroll and stops there. The value after step t:

    * terminated (whether or not also truncated): none, the episode is over;
    * truncated (a time limit): ``truncation_value[t]``, the final observation's value, since
      ``x_{t+1}`` is already the next episode's first observation;
    * otherwise ``V(x_{t+1})``, with ``V(x_T) = bootstrap_value``.

    ``truncation_value`` is read only where an episode was truncated and not terminated.
    """
    log_rhos, rewards, values = (np.asarray(x, np.float64) for x in (log_rhos, rewards, values))
    truncation_value = np.asarray(truncation_value, np.float64)
    bootstrap_value = np.asarray(bootstrap_value, np.float64)
    t_len, b_len = rewards.shape
    vs = np.zeros((t_len, b_len))
    pg = np.zeros((t_len, b_len))
    for b in range(b_len):
        v = np.append(values[:, b], bootstrap_value[b])
        rho = np.exp(log_rhos[:, b])

        def after(t, v_next, b=b):
            if terminated[t, b]:
                return 0.0
            if truncated[t, b]:
                return gamma * truncation_value[t, b]
            return gamma * v_next

        for s in range(t_len):
            total, trace = 0.0, 1.0
            for t in range(s, t_len):
                delta = rewards[t, b] + after(t, v[t + 1]) - v[t]
                total += trace * _clip(rho[t], clip_rho_threshold) * delta
                if terminated[t, b] or truncated[t, b]:
                    break
                trace *= gamma * lambda_ * _clip(rho[t], clip_c_threshold)
            vs[s, b] = v[s] + total
        for s in range(t_len):
            v_next = vs[s + 1, b] if s + 1 < t_len else bootstrap_value[b]
            pg[s, b] = _clip(rho[s], clip_pg_rho_threshold) * (
                rewards[s, b] + after(s, v_next) - v[s]
            )
    return vs, pg


def gae(discounts, rewards, values, bootstrap_value, lambda_):
    """A_t = sum_l (prod_{i<l} gamma_{t+i} lambda) delta_{t+l}, written out as a double sum."""
    rewards, values, discounts = (np.asarray(x, np.float64) for x in (rewards, values, discounts))
    t_len, b_len = rewards.shape
    adv = np.zeros((t_len, b_len))
    for b in range(b_len):
        v = np.append(values[:, b], bootstrap_value[b])
        deltas = [rewards[t, b] + discounts[t, b] * v[t + 1] - v[t] for t in range(t_len)]
        for t in range(t_len):
            weight = 1.0
            for k in range(t, t_len):
                adv[t, b] += weight * deltas[k]
                weight *= discounts[k, b] * lambda_
    return adv, adv + values


def n_step_return(rewards, discounts, bootstrap_value):
    """G_s = r_s + d_s r_{s+1} + ... + (prod d) * bootstrap: the full bootstrapped return."""
    t_len, b_len = rewards.shape
    out = np.zeros((t_len, b_len))
    for b in range(b_len):
        for s in range(t_len):
            g, scale = 0.0, 1.0
            for t in range(s, t_len):
                g += scale * rewards[t, b]
                scale *= discounts[t, b]
            out[s, b] = g + scale * bootstrap_value[b]
    return out


def log_softmax(logits):
    logits = np.asarray(logits, np.float64)
    m = logits.max(axis=-1, keepdims=True)
    return logits - m - np.log(np.exp(logits - m).sum(axis=-1, keepdims=True))


def gaussian_log_prob(x, mean, log_std):
    """Sum over the last axis of the 1-D normal log-density."""
    x, mean, log_std = (np.asarray(a, np.float64) for a in (x, mean, log_std))
    std = np.exp(log_std)
    return np.sum(
        -((x - mean) ** 2) / (2 * std**2) - np.log(std) - 0.5 * np.log(2 * np.pi), axis=-1
    )


def squashed_gaussian_entropy_mc(mean, log_std, low, high, samples=2_000_000, seed=0):
    """Monte Carlo entropy of ``a = low + (tanh(u) + 1) / 2 * (high - low)``,
    ``u ~ N(mean, exp(log_std))`` (independent dims): ``-mean(log p(a))`` over samples, with
    ``log p(a) = log N(u) - sum log |da/du|`` by the change of variables.

    Returns:
      ``(estimate, standard error)``.
    """
    mean, log_std, low, high = (np.asarray(x, np.float64) for x in (mean, log_std, low, high))
    rng = np.random.default_rng(seed)
    u = mean + np.exp(log_std) * rng.standard_normal((samples, mean.size))
    # 1 - tanh(u)^2 = 4 / (e^u + e^-u)^2, in logs without overflow
    log_sech2 = np.log(4.0) - 2.0 * (np.abs(u) + np.log1p(np.exp(-2.0 * np.abs(u))))
    log_det = np.sum(np.log((high - low) / 2.0) + log_sech2, axis=-1)
    neg_log_p = -(gaussian_log_prob(u, mean, log_std) - log_det)
    return float(neg_log_p.mean()), float(neg_log_p.std() / np.sqrt(samples))


def gaussian_kl(mean1, log_std1, mean2, log_std2):
    """KL(N1 || N2) = log(s2/s1) + (s1^2 + (m1-m2)^2) / (2 s2^2) - 1/2, summed over dims."""
    m1, l1, m2, l2 = (np.asarray(a, np.float64) for a in (mean1, log_std1, mean2, log_std2))
    s1, s2 = np.exp(l1), np.exp(l2)
    return np.sum(np.log(s2 / s1) + (s1**2 + (m1 - m2) ** 2) / (2 * s2**2) - 0.5, axis=-1)


def make_inputs(seed, t=9, b=4, rho_scale=1.0, done_prob=0.2):
    """Random inputs whose rhos land on both sides of every threshold, with episode ends."""
    rng = np.random.default_rng(seed)
    done = rng.random((t, b)) < done_prob
    return dict(
        log_rhos=rng.normal(0.0, rho_scale, (t, b)).astype(np.float32),
        discounts=(0.9 * ~done).astype(np.float32),
        rewards=rng.normal(size=(t, b)).astype(np.float32),
        values=rng.normal(size=(t, b)).astype(np.float32),
        bootstrap_value=rng.normal(size=(b,)).astype(np.float32),
    )
