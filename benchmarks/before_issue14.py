#!/usr/bin/env python3
"""The explorer before issue 14 and now, in one run: the code of commit 6f9e82e (the results pinned just
before the speed work; ``git archive`` of this checkout) and the working tree, each exploring one scenario
with symmetry off in a fresh process, alternately, CPU time best of 3 per process, ROUNDS rounds.
Usage:
    python benchmarks/before_issue14.py [SCENARIO.toml] [--rounds N]
Default: src/pyiommufd/scenarios/bench/intel-8dev-3units.toml, 3 rounds.  Needs a git checkout (the old
code comes from its history): elsewhere it says so and exits 2.  Prints JSON."""
import json
import subprocess
import sys
import tarfile
import tempfile
from io import BytesIO
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BEFORE = "6f9e82e"    # "Pin the explorer's results before the speed work (issue 14)"
DEFAULT = ROOT / "src/pyiommufd/scenarios/bench/intel-8dev-3units.toml"
ONE_RUN = """
import gc, sys, time
sys.path.insert(0, sys.argv[1])
from pyiommufd.scenario import load
from pyiommufd.explore import explore
sc = load(sys.argv[2])
best = None
for _ in range(3):
    gc.collect()
    t = time.process_time()
    r = explore(sc, "linux-6.12", symmetry=False)
    t = time.process_time() - t
    best = t if best is None else min(best, t)
print(r["states"], best)
"""


def old_tree(dest: Path) -> Path:
    """The src/ of ``BEFORE``, unpacked under ``dest``."""
    try:
        data = subprocess.run(["git", "-C", str(ROOT), "archive", BEFORE, "src"], check=True,
                              capture_output=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        err = getattr(e, "stderr", b"") or b""
        sys.exit(f"before_issue14: cannot read commit {BEFORE} from {ROOT} (a git checkout with its history is "
                 f"needed): {err.decode().strip() or e}")
    with tarfile.open(fileobj=BytesIO(data)) as tar:
        tar.extractall(dest, filter="data")
    return dest / "src"


def main(argv: list[str]) -> int:
    scen = Path(next((a for a in argv if a.endswith(".toml")), DEFAULT)).resolve()
    rounds = int(argv[argv.index("--rounds") + 1]) if "--rounds" in argv else 3
    if not scen.is_file():
        print(f"before_issue14: no scenario {scen}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        trees = {"before": old_tree(Path(tmp)), "now": ROOT / "src"}
        times = {k: [] for k in trees}
        states = {}
        for r in range(rounds):
            for name, src in trees.items():
                out = subprocess.run([sys.executable, "-c", ONE_RUN, str(src), str(scen)], check=True,
                                     capture_output=True, text=True).stdout.split()
                states[name] = int(out[0])
                times[name].append(float(out[1]))
                print(f"round {r + 1}/{rounds}: {name} {float(out[1]):.3f} s", file=sys.stderr)
    if states["before"] != states["now"]:
        print(f"before_issue14: state counts differ: {states}", file=sys.stderr)
        return 1
    best = {k: min(v) for k, v in times.items()}
    print(json.dumps({"scenario": scen.name, "symmetry": False, "before_commit": BEFORE, "states": states["now"],
                      "seconds": {k: round(v, 4) for k, v in best.items()},
                      "states_per_s": {k: round(states["now"] / v, 1) for k, v in best.items()},
                      "speedup": round(best["before"] / best["now"], 2),
                      "all_seconds": {k: [round(x, 4) for x in v] for k, v in times.items()}}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
