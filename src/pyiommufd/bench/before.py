"""The explorer before issue 14, measured in the same run as today's: the code of commit ``BEFORE`` (the
results pinned just before the speed work) taken from this checkout's git history, and the working tree,
each exploring one scenario with symmetry off in a fresh process, alternately (CPU seconds, best of 3 per
process).  From an installed package (no git history) there is nothing to run: ``measure`` says why."""
from __future__ import annotations

import subprocess
import sys
import tarfile
import tempfile
from io import BytesIO
from pathlib import Path

BEFORE = "6f9e82e"    # "Pin the explorer's results before the speed work (issue 14)"
ROOT = Path(__file__).resolve().parents[3]    # the checkout: src/pyiommufd/bench/before.py
_ONE_RUN = """
import gc, sys, time
sys.path.insert(0, sys.argv[1])
from pyiommufd.scenario import load
from pyiommufd.explore import explore
sc = load(sys.argv[2])
best = None
for _ in range(3):
    gc.collect()
    t = time.process_time()
    r = explore(sc, sys.argv[3], symmetry=False)
    t = time.process_time() - t
    best = t if best is None else min(best, t)
print(r["states"], best)
"""


class Unavailable(Exception):
    """The old code cannot be had here (not a git checkout, or the commit is missing)."""


def old_source(dest: Path) -> Path:
    """The ``src`` of ``BEFORE``, unpacked under ``dest``."""
    if not (ROOT / ".git").exists():
        raise Unavailable(f"{ROOT} is not a git checkout: the code before issue 14 comes from its history")
    try:
        data = subprocess.run(["git", "-C", str(ROOT), "archive", BEFORE, "src"], check=True,
                              capture_output=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        err = (getattr(e, "stderr", None) or b"").decode().strip()
        raise Unavailable(f"cannot read commit {BEFORE} from {ROOT}: {err or e}") from None
    with tarfile.open(fileobj=BytesIO(data)) as tar:
        tar.extractall(dest, filter="data")
    return dest / "src"


def measure(scenario: Path, profile: str = "linux-6.12", rounds: int = 3, progress=None) -> dict:
    """Both explorers on ``scenario``, ``rounds`` times each, alternately.  Raises ``Unavailable``, and
    RuntimeError if the two count different states (then the comparison means nothing)."""
    say = progress or (lambda msg: None)
    with tempfile.TemporaryDirectory() as tmp:
        trees = {"before": old_source(Path(tmp)), "now": ROOT / "src"}
        times: dict = {k: [] for k in trees}
        states = {}
        for r in range(rounds):
            for name, src in trees.items():
                out = subprocess.run([sys.executable, "-c", _ONE_RUN, str(src), str(scenario), profile], check=True,
                                     capture_output=True, text=True).stdout.split()
                states[name] = int(out[0])
                times[name].append(float(out[1]))
                say(f"round {r + 1}/{rounds}: the explorer {'before issue 14' if name == 'before' else 'now'}: "
                    f"{float(out[1]):.3f} s")
    if states["before"] != states["now"]:
        raise RuntimeError(f"the explorers before issue 14 and now count different states: {states}")
    best = {k: min(v) for k, v in times.items()}
    return {"scenario": scenario.name, "symmetry": False, "before_commit": BEFORE, "states": states["now"],
            "seconds": {k: round(v, 4) for k, v in best.items()},
            "states_per_s": {k: round(states["now"] / v, 1) for k, v in best.items()},
            "speedup": round(best["before"] / best["now"], 2),
            "all_seconds": {k: [round(x, 4) for x in v] for k, v in times.items()}}
