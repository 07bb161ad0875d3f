"""A sweep's size before it runs, the bound and --force, progress with an ETA, Ctrl-C, and the engine as a
parameter (issue 15)."""
import ast
import json
import os
import select
import signal
import subprocess
import sys
import time

import pytest
from conftest import ROOT

from pyiommufd import sweep_size
from pyiommufd.explore import explore
from pyiommufd.report.progress import SweepProgress
from pyiommufd.sweep import (ProcessEngine, SystemShape, enumerate_systems, parse_policies, run_sweep, scenario_for,
                             systems_of_size)
from pyiommufd.sweep_size import done_sets, size_sweep

ENV = {"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"}


def cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "pyiommufd", *args], capture_output=True, text=True, cwd=ROOT,
                          env=ENV, timeout=timeout, check=False)


def test_counting_size_by_size_is_the_enumeration():
    assert enumerate_systems(5, 3) == [s for n in range(1, 6) for s in systems_of_size(n, 3)]
    assert len(enumerate_systems(4, 3)) == 109 and len(enumerate_systems(6, 3)) == 597   # docs/sweep.md
    assert enumerate_systems(4, 2, min_devices=3, groups="own", unplug="none") == [
        s for n in (3, 4) for s in systems_of_size(n, 2, groups="own", unplug="none")]


@pytest.mark.parametrize("symmetry", [True, False])
def test_done_sets_is_a_lower_bound_exact_for_one_device(symmetry):
    """Every policy's exploration visits at least done_sets(shape) states; with one device exactly that."""
    for shape in enumerate_systems(3, 2):
        sc = scenario_for(shape)
        for profile in ("linux-6.2", "linux-6.12", "proposal-upgrade-keep"):
            states = explore(sc, profile, symmetry=symmetry)["states"]
            assert states >= done_sets(shape, symmetry), (shape.label(), profile)
            if shape.devices == 1:
                assert states == done_sets(shape, symmetry), (shape.label(), profile)
    assert done_sets(SystemShape.from_label("nosc[1,1] sc[1] +unplug")) == 6 * 2       # (2+1)(2+2)/2 x (1+1)
    assert done_sets(SystemShape.from_label("nosc[1,1] sc[1] +unplug"), symmetry=False) == 3 * 3 * 2


def test_estimate_calibrates_on_the_sweeps_own_systems_and_those_are_not_explored_again():
    pol = parse_policies("linux-6.12,linux-6.12+cc-aware")
    shapes = enumerate_systems(3, 2)
    size = size_sweep([shapes], pol, workers=1)
    assert size.complete and len(size.shapes) == len(shapes) and size.explorations == 2 * len(shapes)
    assert set(size.calibration.results) <= {s.label() for s in shapes} and size.calibration.results
    # a system is read off the one of its class with one unit per kind (sweep.read_off_units); a system without
    # hot-unplugs off its +unplug twin (sweep.run_sweep): no states of their own
    explored = [s for s in shapes if s.pooled() == s and
                (s.unplug or s.label() + " +unplug" not in {t.label() for t in shapes})]
    assert len(explored) < len(shapes)
    assert size.lower_bound == 2 * sum(done_sets(s) for s in explored)
    assert size.calibration.ratio >= 1 and size.states >= size.lower_bound and size.seconds > 0
    calls = []
    r = run_sweep(shapes, pol, engine=ProcessEngine(1), precomputed=size.calibration.results,
                  progress=lambda d, t, label: calls.append(label))
    plain = run_sweep(shapes, pol, jobs=1)
    def results(sweep_json):   # which systems were read off a +unplug twin depends on what was precomputed
        return [dict(x, results={p: {k: v for k, v in res.items() if k != "derived"}
                                 for p, res in x["results"].items()}) for x in sweep_json["systems"]]
    assert r["policies"] == plain["policies"] and results(r) == results(plain)
    # the progress ETA weighs only what the sweep explores: the systems it reads off others' weigh nothing
    w = size.weights()
    explored_here = {x["label"] for x in r["systems"] if any("derived" not in v for v in x["results"].values())}
    assert {k for k, v in w.items() if v} == explored_here
    assert all(w[s.label()] == done_sets(s) for s in shapes if s.label() in explored_here)
    # what the size line says is read off is what the sweep reads off, calibration or not
    assert r["derived_explorations"] == plain["derived_explorations"] == size.folded
    assert any(x.get("also") for x in size.calibration.results.values())
    assert len(calls) == len(shapes) and sorted(calls) == sorted(s.label() for s in shapes)
    # against the measured totals: the estimate lands within 30% of the states the sweep visits
    assert 0.7 < size.states / plain["states"] < 1.3, (size.states, plain["states"])


def test_counting_stops_at_the_bound_without_force():
    pol = parse_policies()
    sizes = (systems_of_size(n, 3) for n in range(1, 10**5))
    t0 = time.perf_counter()
    size = size_sweep(sizes, pol, workers=2, max_devices=10**5, bound_seconds=60)
    assert time.perf_counter() - t0 < 60
    assert not size.complete and size.beyond_bound and size.counted_devices < 12
    assert "at least" in size.sentence() and f"of {10**5}" in size.sentence()


def test_cli_refuses_an_unbounded_sweep_at_once():
    t0 = time.perf_counter()
    r = cli("sweep", "--max-devices", "100000", timeout=120)
    assert r.returncode == 2, r.stderr
    assert r.stdout == "" and "Traceback" not in r.stderr
    assert "beyond the bound" in r.stderr and "--force" in r.stderr and "at least" in r.stderr
    assert "explorations" in r.stderr and "estimated" in r.stderr and " h " in r.stderr
    assert time.perf_counter() - t0 < 90


def test_cli_prints_the_size_first_and_reports_the_estimate():
    r = cli("sweep", "--max-devices", "2", "--max-units", "1", "--policies", "linux-6.12", "--workers", "1", "--json")
    assert r.returncode == 0, r.stderr
    first = r.stderr.splitlines()[0]
    assert first.startswith("sweep: 8 systems x 1 policy = 8 explorations (2 read off other systems' explorations); estimated ")
    assert "ms CPU per state" in first
    est = json.loads(r.stdout)["estimate"]
    assert est["systems"] == 8 and est["explorations"] == 8 and est["complete"] is True
    assert est["calibration"]["states"] > 0 and est["lower_bound_states"] > 0
    assert "systems explored in" in r.stderr


def test_progress_lines_carry_an_eta():
    class Err:
        is_terminal = False
        lines = []

        def print(self, text, markup=True, soft_wrap=False):
            self.lines.append(text)
    err = Err()
    with SweepProgress(err, {"a": 3.0, "b": 1.0, "c": 1.0}, interval=0) as p:
        p.skip(["c"])
        p(1, 3, "c")
        time.sleep(0.05)
        p(2, 3, "a")
        p(3, 3, "b")
    assert "ETA" in err.lines[1] and "2/3 systems explored" in err.lines[1]
    assert err.lines[-1].startswith("sweep: 3/3 systems explored in")


def _stderr_until(proc, needle: str, seconds: float) -> str:
    """Read the child's stderr until a line holds ``needle`` (or time runs out)."""
    got, end = "", time.monotonic() + seconds
    while time.monotonic() < end and needle not in got:
        ready, _, _ = select.select([proc.stderr], [], [], 1)
        if ready:
            chunk = os.read(proc.stderr.fileno(), 65536).decode()
            if not chunk:
                break
            got += chunk
    return got


def test_ctrl_c_ends_a_running_sweep_cleanly():
    """SIGINT to a real `pyiommufd sweep` with a pool of 2 worker processes, after a progress line: exit 130 at
    once, what was done on stderr, nothing on stdout, no traceback or multiprocessing warning, no process left."""
    proc = subprocess.Popen([sys.executable, "-m", "pyiommufd", "sweep", "--max-devices", "8", "--max-units", "3",
                             "--workers", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT, env=ENV,
                            start_new_session=True)
    try:
        before = _stderr_until(proc, "ETA", 120)
        assert "ETA" in before, before
        proc.send_signal(signal.SIGINT)
        t0 = time.monotonic()
        out, rest = proc.communicate(timeout=30)
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    err = before + rest.decode()
    assert proc.returncode == 130, err
    assert took < 10, took
    assert out == b""
    assert "sweep: interrupted after" in err and "no verdict" in err
    for bad in ("Traceback", "KeyboardInterrupt", "warn", "leaked", "resource_tracker"):
        assert bad not in err, err
    time.sleep(1)
    left = subprocess.run(["ps", "-o", "stat=", "-g", str(proc.pid)], capture_output=True, text=True).stdout.split()
    assert all(s.startswith("Z") for s in left), left        # workers, forkserver: gone (a zombie awaits reaping)


def _imports(module: str) -> set[str]:
    tree = ast.parse((ROOT / "src" / "pyiommufd" / f"{module}.py").read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            out.add((node.module or "").lstrip("."))
            out.update(a.name for a in node.names if not node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


def test_sweep_and_distributed_do_not_import_each_other():
    """The engine is a parameter of run_sweep: sweep.py never imports distributed.py, nor the reverse."""
    assert not {m for m in _imports("sweep") if m.split(".")[-1] == "distributed"}
    assert not {m for m in _imports("distributed") if m.split(".")[-1] in ("sweep", "sweep_size")}
    with pytest.raises(ValueError, match="jobs"):
        run_sweep([], [], engine=ProcessEngine(1), jobs=2)


def test_force_counts_everything_beyond_the_bound():
    pol = parse_policies("linux-6.12")
    sizes = (systems_of_size(n, 2) for n in range(1, 5))
    size = size_sweep(sizes, pol, workers=1, max_devices=4, bound_seconds=1e-6, force=True)
    assert size.complete and size.beyond_bound and len(size.shapes) == len(enumerate_systems(4, 2))
    refused = size_sweep((systems_of_size(n, 2) for n in range(1, 5)), pol, workers=1, max_devices=4,
                         bound_seconds=1e-6)
    assert refused.beyond_bound      # (small: counted whole before the calibration, which runs at 20,000 states)
