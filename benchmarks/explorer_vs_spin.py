#!/usr/bin/env python3
"""The explorer (symmetry on and off), a naive BFS and SPIN on one scenario: state counts,
transitions, verdicts, times.  Usage:
    python benchmarks/explorer_vs_spin.py [SCENARIO.toml] [--no-naive] [--repeats N] [--profile]
Default: src/pyiommufd/scenarios/bench/intel-8dev-3units.toml."""
import json
import sys
from pathlib import Path

import _path  # noqa: F401

from pyiommufd.bench import BENCH_8, PROFILE, compare_engines, explorer_breakdown
from pyiommufd.bench.spin import missing_tools
from pyiommufd.scenario import load

args = sys.argv[1:]
path = Path(next((a for a in args if a.endswith(".toml")), BENCH_8)).resolve()
repeats = int(args[args.index("--repeats") + 1]) if "--repeats" in args else 3
res = compare_engines(path, PROFILE, repeats, with_naive="--no-naive" not in args, with_spin=not missing_tools(),
                      progress=lambda m: print(m, file=sys.stderr))
if "--profile" in args:
    res["explorer_breakdown"] = explorer_breakdown(load(path), PROFILE)
print(json.dumps(res, indent=2))
