#!/usr/bin/env python3
"""What a sweep up to N devices costs, measured up to --measure devices and extrapolated beyond.

For each device count n: the exact number of system shapes (3 units), and on a seeded sample of up to
--sample shapes of exactly n devices, explored under the default 7 policies: states per exploration,
CPU seconds per state, the largest exploration.  Then, for the sweeps up to --targets devices, the
states and CPU time: measured shape counts times states per exploration (measured up to --measure,
beyond it extrapolated with the growth ratio of the last two measured n) times CPU per state (fitted
linearly in n).  Usage:
    python benchmarks/sweep_estimate.py [--measure 8] [--sample 40] [--targets 8,12,16] [--jobs 2]
Prints JSON (docs/sweep.md quotes it)."""
import json
import random
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import _path  # noqa: F401

from pyiommufd.sweep import SystemShape, enumerate_systems, explore_system, parse_policies

POLICIES = parse_policies()


def one(label):
    r = explore_system(SystemShape.from_label(label), POLICIES)["results"]
    return (sum(v.get("states", 0) for v in r.values()), sum(v.get("cpu_seconds", 0) for v in r.values()),
            max(v.get("states", 0) for v in r.values()))


def arg(name, default):
    a = sys.argv[1:]
    return a[a.index(name) + 1] if name in a else default


def main():
    measure, per = int(arg("--measure", 8)), int(arg("--sample", 40))
    targets = [int(x) for x in arg("--targets", "8,12,16").split(",")]
    jobs = int(arg("--jobs", 2))
    units = 3
    rnd = random.Random(9)
    measured = {}
    with ProcessPoolExecutor(jobs) as pool:
        for n in range(1, measure + 1):
            shapes = enumerate_systems(n, units, min_devices=n)
            sample = shapes if len(shapes) <= per else rnd.sample(shapes, per)
            t0 = time.time()
            res = list(pool.map(one, [s.label() for s in sample]))
            states, cpu = sum(r[0] for r in res), sum(r[1] for r in res)
            measured[n] = {"shapes": len(shapes), "sampled": len(sample), "explorations": len(sample) * len(POLICIES),
                           "states_per_exploration": states / (len(sample) * len(POLICIES)),
                           "cpu_ms_per_state": 1000 * cpu / states, "largest_exploration": max(r[2] for r in res),
                           "wall_seconds": round(time.time() - t0, 1)}
            print(n, measured[n], file=sys.stderr, flush=True)
    ns = sorted(measured)
    growth = measured[ns[-1]]["states_per_exploration"] / measured[ns[-2]]["states_per_exploration"]
    big_growth = measured[ns[-1]]["largest_exploration"] / measured[ns[-2]]["largest_exploration"]
    # CPU per state: least squares line over n >= 3 (small systems are dominated by fixed costs)
    pts = [(n, measured[n]["cpu_ms_per_state"]) for n in ns if n >= 3]
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    slope = sum((x - mx) * (y - my) for x, y in pts) / sum((x - mx) ** 2 for x, _ in pts)
    per_state = {n: max(my + slope * (n - mx), 0.1) for n in range(1, max(targets) + 1)}
    shapes_exact = {n: len(enumerate_systems(n, units, min_devices=n)) for n in range(1, max(targets) + 1)}
    rows = {}
    for target in targets:
        states = cpu = 0.0
        largest = 0.0
        for n in range(1, target + 1):
            if n in measured:
                spe, big = measured[n]["states_per_exploration"], measured[n]["largest_exploration"]
            else:
                spe = measured[ns[-1]]["states_per_exploration"] * growth ** (n - ns[-1])
                big = measured[ns[-1]]["largest_exploration"] * big_growth ** (n - ns[-1])
            st = shapes_exact[n] * len(POLICIES) * spe
            states += st
            cpu += st * per_state[n] / 1000
            largest = max(largest, big)
        rows[target] = {"shapes": sum(shapes_exact[n] for n in range(1, target + 1)),
                        "explorations": sum(shapes_exact[n] for n in range(1, target + 1)) * len(POLICIES),
                        "states": round(states), "cpu_hours": cpu / 3600,
                        "cpu_ms_per_state_at_n": round(per_state[target], 3), "largest_exploration": round(largest),
                        "extrapolated": target > measure}
    print(json.dumps({"units": units, "policies": [p + ("" if s == "kernel-auto" else "+" + s) for p, s in POLICIES],
                      "measured": measured, "growth_per_device": growth, "largest_growth_per_device": big_growth,
                      "cpu_ms_per_state_fit": {"at_mean_n": my, "mean_n": mx, "slope_per_device": slope},
                      "targets": rows}, indent=1))


if __name__ == "__main__":
    main()
