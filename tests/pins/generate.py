"""Regenerate tests/pins/explore.json: the explorer's results pinned before issue 14's speed work.

    .venv/bin/python tests/pins/generate.py

A changed pin is a changed state space or verdict: regenerate only on purpose, and say why in
the commit.  Pinned: every scenario with ``[explore]`` events under each of its profiles, symmetry on
and off, the cc-aware and qemu-style strategies under linux-6.12, and every sweep system up to 3
devices over 2 units under the 7 default policies (symmetry on and off).

Changed once on purpose: issue 14's third session made ``sweep.scenario_for`` order the groups
independently of their units, which renamed the devices of ``nosc[1] nosc[2] +unplug``; its 14 pins
were rewritten by this reference path after checking that the explorer still gave every old pin on
the old scenarios."""
from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))

from pyiommufd import sweep  # noqa: E402
from pyiommufd.errors import ScenarioError  # noqa: E402
from pyiommufd.explore import explore  # noqa: E402
from pyiommufd.scenario import load  # noqa: E402

SCENARIOS = ROOT / "src" / "pyiommufd" / "scenarios"
OUT = Path(__file__).with_name("explore.json")
DROP = ("seconds", "states_per_second")
SLOW = {("intel-10dev-3units", False),    # 12 s each: pinned by the bench (states_agree with SPIN) instead
        ("intel-12dev-4units", False)}


def result(sc, profile, strategy, symmetry, live=True):
    try:
        r = explore(sc, profile, strategy, symmetry=symmetry, live=live)
    except ScenarioError as e:
        return {"skipped": str(e)}
    return {k: v for k, v in r.items() if k not in DROP}


def cases():
    """(case id, scenario, profile, strategy, symmetry) for every pinned exploration."""
    out = []
    for path in sorted(SCENARIOS.rglob("*.toml")):
        sc = load(path)
        if not sc.events:
            continue
        rel = str(path.relative_to(SCENARIOS))
        combos = [(p, "kernel-auto") for p in (sc.profiles or [sc.profile])]
        combos += [("linux-6.12", s) for s in ("qemu-style", "cc-aware")]
        for p, s in combos:
            for sym in (True, False):
                if (sc.name, sym) in SLOW:
                    continue
                out.append((f"{rel}|{p}|{s}|{'sym' if sym else 'nosym'}", path, p, s, sym))
    for shape in sweep.enumerate_systems(3, 2):
        for p, s in sweep.parse_policies():
            for sym in (True, False):
                out.append((f"sweep:{shape.label()}|{p}|{s}|{'sym' if sym else 'nosym'}", shape, p, s, sym))
    return out


def scenario_of(src):
    return sweep.scenario_for(src) if isinstance(src, sweep.SystemShape) else load(src)


def main():
    # written by the reference path (a copy of the machine per state, no orbit merging)
    pins = {cid: result(scenario_of(src), p, s, sym, live=False) for cid, src, p, s, sym in cases()}
    OUT.write_text(json.dumps(pins, indent=None, sort_keys=True, separators=(",", ":")) + "\n")
    print(f"{len(pins)} explorations pinned in {OUT}")


if __name__ == "__main__":
    main()
