#!/usr/bin/env python3
"""The explorer before issue 14 and now, in one run (``pyiommufd.bench.before``): the code of commit
6f9e82e from this checkout's git history and the working tree, alternately, symmetry off.  Usage:
    python benchmarks/before_issue14.py [SCENARIO.toml] [--rounds N]
Default: src/pyiommufd/scenarios/bench/intel-8dev-3units.toml, 3 rounds.  Prints JSON; exits 2 when the
scenario is missing or the old code cannot be had (not a git checkout)."""
import json
import sys
from pathlib import Path

import _path  # noqa: F401

from pyiommufd.bench import BENCH_8
from pyiommufd.bench.before import Unavailable, measure

args = sys.argv[1:]
scen = Path(next((a for a in args if a.endswith(".toml")), BENCH_8)).resolve()
rounds = int(args[args.index("--rounds") + 1]) if "--rounds" in args else 3
if not scen.is_file():
    sys.exit(print(f"before_issue14: no scenario {scen}", file=sys.stderr) or 2)
try:
    res = measure(scen, rounds=rounds, progress=lambda m: print(m, file=sys.stderr))
except Unavailable as e:
    sys.exit(print(f"before_issue14: {e}", file=sys.stderr) or 2)
print(json.dumps(res, indent=2))
