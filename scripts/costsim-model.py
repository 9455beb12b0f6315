#!/usr/bin/env python3
"""A model of `costsim`'s heavy-tail family, to ask what any idle-deadline rule could reach.

It regenerates the heavy-tail trace exactly as `src/core/costsim/families.rs` does (same
SplitMix64 stream) and replays it in one pool and one shape: runs take an idle instance
when they arrive (the lowest-numbered one, as `core::matching` ranks equal offers by
name), else launch a machine that boots 180 s and then runs them; machines are billed at
$1.36/h from launch to termination. With fixed deadlines it reproduces the simulator to
the cent (seed 1: fixed-1m $1568.24 / 5403 launched, fixed-5m $1820.55 / 3271).

Rules replayed (deadlines re-decided at every event, which the controller does not do):
  thresholds  keep the idle instance taken first while the time since the pool's last
              arrival is under T1, the second under T2, the others under T3; the grid's
              best, picked on the very trace it is scored on (hindsight);
  learned     a histogram of the pool's gaps between arrivals (log buckets, 2 per doubling),
              and for the first idle instance the T >= s (s: time since the last arrival)
              that minimises E[min(G, T) - s + boot * [G > T] | G > s]; the others end
              at once (T2 = 0) or at T2 = 40 s;
  dp          the optimal rule for a planner that knows the laws (Pareto gaps, shape 1.1,
              scale 20 s; run lengths taken as exponential with mean 300 s), by relative
              value iteration over (time since the last arrival, idle, busy) in 1 s steps.

    python3 scripts/costsim-model.py [thresholds|learned|dp] [SEED ...]   (dp needs numpy)

Offline bounds (from `cargo run --release --example costsim -- --seed N`) divide the costs.
"""
import heapq
import math
import sys

M64 = (1 << 64) - 1
BOOT = 180_000  # ms
PRICE = 1.36
BOUND = {1: 1376.36, 2: 1130.27, 3: 1423.51}


class Rng:
    def __init__(self, seed):
        self.x = (seed ^ 0x9E3779B97F4A7C15) & M64

    def unit(self):
        self.x = (self.x + 0x9E3779B97F4A7C15) & M64
        z = self.x
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
        return (((z ^ (z >> 31)) >> 11) + 1) / float(1 << 53)


def heavy_tail(seed, days=14):
    rng, t, runs = Rng(seed), 0.0, []
    while True:
        t += min(20.0 / rng.unit() ** (1 / 1.1), 2 * 86400)
        if t >= days * 86400:
            return runs
        d = 30 - 270 * math.log(rng.unit())
        rng.unit()  # priority
        runs.append((int(math.floor(t + 0.5)) * 1000, int(max(math.floor(d + 0.5), 1)) * 1000))


def replay(runs, deadlines):
    """Cost, launches, reuses. `deadlines(now, idle, last_arrival, busy)` gives each idle
    instance ([idle_since, id], in the order they went idle) its deadline in ms."""
    events = [(a, 3, i) for i, (a, _) in enumerate(runs)]  # 0 finish, 1 ready, 2 deadline, 3 arrive
    heapq.heapify(events)
    idle, born, state = [], {}, {"gen": 0, "billed": 0, "last": None, "busy": 0}
    launched = reused = 0

    def recheck(now):
        state["gen"] += 1
        keep, nxt = [], None
        for inst, d in zip(list(idle), deadlines(now, idle, state["last"], state["busy"])):
            if d <= now:
                state["billed"] += now - born.pop(inst[1])
            else:
                keep.append(inst)
                nxt = d if nxt is None else min(nxt, d)
        idle[:] = keep
        if nxt is not None:
            heapq.heappush(events, (nxt, 2, state["gen"]))

    while events:
        t, kind, x = heapq.heappop(events)
        if kind == 0:
            state["busy"] -= 1
            idle.append([t, x])
            recheck(t)
        elif kind == 1:
            heapq.heappush(events, (t + runs[x[1]][1], 0, x[0]))
        elif kind == 2:
            if x == state["gen"]:
                recheck(t)
        else:
            state["last"] = t
            state["busy"] += 1
            if idle:
                inst = idle.pop(min(range(len(idle)), key=lambda j: idle[j][1]))
                reused += 1
                heapq.heappush(events, (t + runs[x][1], 0, inst[1]))
            else:
                born[launched] = t
                heapq.heappush(events, (t + BOOT, 1, (launched, x)))
                launched += 1
            recheck(t)
    return state["billed"] * PRICE / 3.6e6, launched, reused  # keep-forever leftovers: none


def fixed(ms):
    return lambda now, idle, last, busy: [s + ms for s, _ in idle]


def thresholds(t1, t2, t3):
    def rule(now, idle, last, busy):
        ts = [t1, t2] + [t3] * len(idle)
        return [max(last + ts[j] * 1000, s) for j, (s, _) in enumerate(idle)]

    return rule


def learned(t2, per=2, buckets=40):
    edge = [2 ** (k / per) for k in range(buckets)]
    rep = [0.5] + [math.sqrt(edge[k - 1] * edge[k]) for k in range(1, buckets)]
    counts, seen = [0] * buckets, [None]

    def first(s):
        n = sum(c for k, c in enumerate(counts) if rep[k] > s)
        if sum(counts) < 8 or n == 0:
            return s + BOOT / 1000
        best = None
        for t in [s] + [e for e in edge if e > s]:
            cost = sum(c * ((rep[k] - s) if rep[k] <= t else (t - s + BOOT / 1000)) for k, c in enumerate(counts) if rep[k] > s)
            if best is None or cost < best[0] - 1e-9:
                best = (cost, t)
        return best[1]

    def rule(now, idle, last, busy):
        if last is not None and last != seen[0]:
            if seen[0] is not None:
                g = (last - seen[0]) / 1000
                counts[next((k for k, e in enumerate(edge) if g < e), buckets - 1)] += 1
            seen[0] = last
        if last is None:
            return [s + BOOT for s, _ in idle]
        t1 = first((now - last) / 1000)
        return [max(last + (t1 if j == 0 else t2) * 1000, s) for j, (s, _) in enumerate(idle)]

    return rule


def dp_rule(horizon=3000, max_idle=5, max_busy=16, iterations=30000):
    import numpy as np

    s = np.arange(horizon + 1, dtype=float)
    surv = lambda x: np.where(x < 20, 1.0, (20.0 / np.maximum(x, 1e-9)) ** 1.1)
    pa = (1 - surv(s + 1) / surv(s))[:, None, None]
    pf = np.minimum(np.arange(max_busy + 1) / 300.0, 1.0)[None, None, :]
    n, m = np.arange(max_idle + 1), np.arange(max_busy + 1)
    up, down = np.minimum(m + 1, max_busy), np.maximum(m - 1, 0)
    nd, nu, b = np.maximum(n - 1, 0), np.minimum(n + 1, max_idle), BOOT / 1000
    value = np.zeros((horizon + 1, max_idle + 1, max_busy + 1))

    def q_of(v):
        later, v0 = np.concatenate([v[1:], v[-1:]]), v[0]
        arrive = np.where(n[:, None] > 0, v0[nd][:, up], b + v0[0][up][None, :])
        arrive_finish = np.where(n[:, None] > 0, v0, b + np.repeat(v0[1][None, :], max_idle + 1, 0))
        finish = later[:, nu][:, :, down]
        return n[None, :, None] + pa * ((1 - pf) * arrive[None] + pf * arrive_finish[None]) + (1 - pa) * (pf * finish + (1 - pf) * later)

    for _ in range(iterations):
        new = np.minimum.accumulate(q_of(value), axis=1)
        value = new - new[0, 0, 0]
    q = q_of(value)
    allowed = n[None, :, None, None] <= n[None, None, :, None]
    keep = np.argmin(np.where(allowed, q[:, :, None, :], np.inf), axis=1)  # keep[s, idle, busy]

    def rule(now, idle, last, busy):
        if last is None:
            return [x for x, _ in idle]
        s0, k, mm = min((now - last) // 1000, horizon), min(len(idle), max_idle), min(busy, max_busy)
        out = []
        for j, (x, _) in enumerate(idle):
            drop = np.nonzero(keep[s0:, k, mm] <= j)[0] if j < max_idle else np.array([0])
            out.append(last + (s0 + int(drop[0]) if len(drop) else horizon) * 1000)
        return out

    return rule


def main():
    what = sys.argv[1] if len(sys.argv) > 1 else "thresholds"
    seeds = [int(a) for a in sys.argv[2:]] or [1, 2, 3]
    rule = dp_rule() if what == "dp" else None
    for seed in seeds:
        runs = heavy_tail(seed)
        if what == "check":
            for name, r in (("fixed-1m", fixed(60_000)), ("fixed-5m", fixed(300_000))):
                print(seed, name, replay(runs, r))
        elif what == "thresholds":
            grid = [(t1, t2, t3) for t1 in (160, 200, 240) for t2 in (0, 40, 80, 120) for t3 in (0, 20, 40) if t3 <= t2]
            best = min((replay(runs, thresholds(*g))[0], g) for g in grid)
            print(f"seed {seed} thresholds T1/T2/T3 {best[1]}: ${best[0]:.2f} = {best[0] / BOUND[seed]:.4f} x bound")
        elif what == "learned":
            for t2 in (0, 40):
                c = replay(runs, learned(t2))[0]
                print(f"seed {seed} learned, T2 {t2}s: ${c:.2f} = {c / BOUND[seed]:.4f} x bound")
        else:
            c = replay(runs, rule)[0]
            print(f"seed {seed} dp: ${c:.2f} = {c / BOUND[seed]:.4f} x bound")


if __name__ == "__main__":
    main()
