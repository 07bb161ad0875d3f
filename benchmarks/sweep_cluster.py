#!/usr/bin/env python3
"""The on-paper sweep table (docs/sweep.md) from measured sweeps: what a sweep up to N devices costs.

Each measured sweep (``pyiommufd sweep --max-devices n --max-units 3 --json``, 7 policies) gives the states
it explored and their CPU time.  For every bound, measured or not, the explored systems are counted
exactly (``sweep.explored_systems``: one system per class, plain systems read off their +unplug twins)
with their lower bound of states (``sweep_size.done_sets``, times the policies).  Beyond the last measured
sweep: states = lower bound x the measured states per lower-bound state, grown by its ratio between the
last two measured sweeps per 2 devices; CPU per state grown likewise.  Usage:
    python benchmarks/sweep_cluster.py sweep8.json sweep10.json sweep12.json [--targets 14,16]
Prints JSON."""
import json
import sys

import _path  # noqa: F401

from pyiommufd.sweep import explored_systems, parse_policies, systems_of_size
from pyiommufd.sweep_size import done_sets


def bound(n: int, units: int = 3) -> dict:
    shapes = [s for k in range(1, n + 1) for s in systems_of_size(k, units)]
    ex = explored_systems(shapes)
    return {"shapes": len(shapes), "explored_systems": len(ex),
            "lower_bound_states": sum(done_sets(s) for s in ex) * len(parse_policies())}


def main():
    args = sys.argv[1:]
    targets = []
    if "--targets" in args:
        i = args.index("--targets")
        targets = [int(x) for x in args[i + 1].split(",")]
        del args[i:i + 2]
    rows = {}
    for path in args:
        d = json.load(open(path))
        n = d["bound"]["max_devices"]
        b = bound(n, d["bound"]["max_units"])
        rows[n] = dict(b, measured=True, states=d["states"], cpu_seconds=d["cpu_seconds"], wall_seconds=d["seconds"],
                       workers=d["engine"].get("workers"),
                       states_per_lower_bound=d["states"] / b["lower_bound_states"],
                       cpu_ms_per_state=1000 * d["cpu_seconds"] / d["states"])
    ns = sorted(rows)
    a, b = rows[ns[-2]], rows[ns[-1]]
    steps = ns[-1] - ns[-2]
    ratio_growth = (b["states_per_lower_bound"] / a["states_per_lower_bound"]) ** (1 / steps)
    cost_growth = (b["cpu_ms_per_state"] / a["cpu_ms_per_state"]) ** (1 / steps)
    for n in targets:
        k = n - ns[-1]
        r = bound(n)
        ratio = b["states_per_lower_bound"] * ratio_growth ** k
        cost = b["cpu_ms_per_state"] * cost_growth ** k
        states = r["lower_bound_states"] * ratio
        rows[n] = dict(r, measured=False, states=round(states), states_per_lower_bound=ratio, cpu_ms_per_state=cost,
                       cpu_seconds=states * cost / 1000)
    print(json.dumps({"growth_per_device": {"states_per_lower_bound": ratio_growth, "cpu_per_state": cost_growth},
                      "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
