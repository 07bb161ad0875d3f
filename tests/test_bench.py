"""`pyiommufd bench`: the three engines agree, the JSON has its keys, the map cost ratio is what it says.
No timing assertions: only that the figures are produced and mean what they claim."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import SCENARIOS
from pyiommufd import bench
from pyiommufd.bench import emulator, naive, spin
from pyiommufd.cli import main
from pyiommufd.explore import explore
from pyiommufd.scenario import load, parse

HOT = load(SCENARIOS / "explore" / "hot-unplug.toml")
TWO = load(SCENARIOS / "explore" / "two-devices.toml")
needs_spin = pytest.mark.skipif(bool(spin.missing_tools()), reason="spin or gcc not installed (apt-get install spin)")


@pytest.mark.parametrize("sc", [HOT, TWO], ids=["hot-unplug", "two-devices"])
def test_explorer_and_naive_count_the_same_states(sc):
    e = explore(sc, "linux-6.12", symmetry=False, graph_limit=10_000)
    n = naive.naive_bfs(sc, "linux-6.12")
    assert n["states"] == e["states"]
    assert n["edges"] == len(e["graph"]["edges"])
    assert sorted(n["hazards"]) == [h["kind"] for h in e["hazards"]]
    assert n["hazards"] == {h["kind"]: h["states"] for h in e["hazards"]}


@needs_spin
@pytest.mark.parametrize("sc", [HOT, TWO], ids=["hot-unplug", "two-devices"])
def test_spin_counts_the_same_states_and_reaches_the_same_verdict(sc):
    e = explore(sc, "linux-6.12", symmetry=False, graph_limit=10_000)
    n = naive.naive_bfs(sc, "linux-6.12")
    s = spin.run_spin(sc, "linux-6.12")
    assert s["states"] == e["states"] == n["states"]
    assert s["transitions"] - 1 == n["edges"]          # pan counts the initial state as a transition
    assert s["hazards"] == [h["kind"] for h in e["hazards"]]
    assert s["hazard_transitions"] == sum(n["hazard_edges"].values())


def test_compare_engines_reports_agreement():
    r = bench.compare_engines(SCENARIOS / "explore" / "hot-unplug.toml", with_spin=False)   # SPIN: tests above
    assert r["states_agree"] and r["verdicts_agree"] and r.get("transitions_agree", True)
    assert r["explorer"]["states"] == 60 and r["explorer_symmetry"]["states"] < 60
    assert r["symmetry_reduction_factor"] == round(60 / r["explorer_symmetry"]["states"], 2)


def test_promela_one_d_step_per_event_and_the_property():
    text = spin.promela(HOT, "linux-6.12")
    assert text.count(":: d_step {") == len(HOT.events)
    assert "end: do" in text and "assert(!haz)" in text
    assert "hidden byte i, j;" in text             # loop counters stay out of the state vector
    # no VM: the property cannot be violated
    assert "haz = 0;" in spin.promela(TWO, "linux-6.12")


@pytest.mark.parametrize("profile", ["linux-6.2", "linux-6.6", "proposal-upgrade-keep"])
def test_promela_refuses_other_eras(profile):
    with pytest.raises(ValueError, match="not an E3 kernel"):
        spin.promela(HOT, profile)


def test_promela_refuses_what_it_does_not_model():
    sc = parse({"system": {"iommu": "intel", "units": [{"name": "u0"}]}, "devices": [{"name": "d", "unit": "u0"}],
                "steps": [{"op": "ioas_alloc", "as": "ioas"}, {"op": "bind", "device": "d"},
                          {"op": "hwpt_alloc", "device": "d", "pt": "ioas", "as": "h"}],
                "explore": {"events": [{"op": "attach", "device": "d", "pt": "h"}]}}, "x.toml")
    with pytest.raises(ValueError) as e:
        spin.promela(sc, "linux-6.12")
    assert "hwpt_alloc" in str(e.value) and "attach must name the IOAS" in str(e.value)


def test_promela_refuses_a_stage_that_makes_attach_fail():
    sc = parse({"system": {"iommu": "intel", "kvm": True, "units": [{"name": "u0"}]},
                "devices": [{"name": "d", "unit": "u0"}],
                "steps": [{"op": "ioas_alloc", "as": "ioas"}, {"op": "bind", "device": "d"},
                          {"op": "map", "ioas": "ioas", "iova": 0xFEE00000, "length": 0x1000}],   # the MSI window
                "explore": {"events": [{"op": "attach", "device": "d", "pt": "ioas"}]}}, "x.toml")
    with pytest.raises(ValueError, match="attach of d fails"):
        spin.promela(sc, "linux-6.12")


def test_map_cost_ratio_on_a_tiny_instance():
    r = emulator.map_scaling(small=20, large=300, ops=40, rounds=2)   # asserts the live counts itself
    assert r["live"] == [20, 300] and r["ops"] == 80
    us = r["us_per_op"]
    assert r["ratio"] == pytest.approx(us["300"] / us["20"], rel=0.01)


def test_probe_leaves_the_live_mappings_as_they_were():
    m = emulator._Machine()
    live = emulator.LiveIoas(m, m.nic, 50, 0x1000_0000)
    ctx = m.emu.host.ctxs[m.iommufd.fd]
    before = ctx.objects[live.ioas.id].iopt.areas.items()
    live.probe(30)
    assert ctx.objects[live.ioas.id].iopt.areas.items() == before and live.areas() == 50


TINY = {"cycles": 20, "ioctl_repeats": 1, "map_small": 10, "map_large": 100, "map_ops": 20, "map_rounds": 1}


def test_bench_json_has_every_key_without_spin():
    res = bench.run(quick=True, with_spin=False, sizes=TINY)
    for k in bench.HEADLINE:
        assert k in res
    assert res["spin_seconds"] is None and res["spin_states"] is None and "spin" in res["spin_skipped"]
    assert res["explorer_states"] == 60 and res["naive_seconds"] is not None
    assert {g["id"] for g in res["goals"]} >= {"emulator_ioctls", "map_cost_ratio", "explorer_vs_spin"}
    json.dumps(res)


def test_cli_bench_quick_json_only_json_on_stdout(monkeypatch, capsys):
    monkeypatch.setitem(bench.SIZES, True, dict(bench.SIZES[True], **TINY))
    monkeypatch.setattr(spin, "missing_tools", lambda: ["spin"])
    assert main(["bench", "--quick", "--json"]) == 0
    out = capsys.readouterr()
    res = json.loads(out.out)
    assert all(k in res for k in bench.HEADLINE)
    assert res["command"] == "pyiommufd bench --quick --json" and res["spin_states"] is None
    assert "bench:" in out.err          # progress on stderr


def test_cli_bench_full_needs_spin(monkeypatch, capsys):
    monkeypatch.setattr(spin, "missing_tools", lambda: ["spin"])
    assert main(["bench", "--json"]) == 3
    err = capsys.readouterr().err
    assert "apt-get install spin" in err and "--quick" in err


@needs_spin
def test_spin_on_the_bench_scenario_matches_the_documented_count():
    s = spin.run_spin(load(SCENARIOS / "bench" / "intel-8dev-3units.toml"), "linux-6.12")
    assert s["states"] == 1080 and s["hazards"] == ["kvm-coherent-but-noncoherent-dma"]


def test_missing_tools_names_what_is_absent(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda t: None if t == "spin" else "/usr/bin/" + t)
    assert spin.missing_tools() == ["spin"]


def test_bench_measures_the_explorer_before_issue_14_and_a_real_ioctl():
    res = bench.run(quick=True, with_spin=False, sizes=TINY)
    e = res["explorer"]["hot-unplug"]
    assert e["explorer_reference"]["states"] == e["explorer"]["states"] == 60 and e["states_agree"]
    assert e["speedup_vs_reference"] == res["explorer_speedup_vs_reference"] > 0
    em = res["emulator"]
    assert em["real_ioctl"]["us_per_call"] > 0 and em["emulated_vs_real_ioctl"] == res["emulated_vs_real_ioctl"]
    assert {g["id"] for g in res["goals"]} >= {"explorer_speedup", "emulated_vs_real_ioctl", "explorer_speedup_same_run"}
    # the code before issue 14, from git, on the same scenario in the same run (or why not)
    b = res["explorer_before_issue14"]
    if "skipped" not in b:
        assert b["states"] == e["explorer"]["states"] and b["before_commit"] == "6f9e82e"
        assert res["explorer_speedup_vs_before_issue14_code"] == b["speedup"] > 0
    # the path alone (IOMMU_OPTION get) costs less than the mix's average ioctl, which does model work
    floor = em["us_per_ioctl_by_kind"][emulator.FLOOR]
    assert 0 < floor < em["us_per_ioctl"]
    assert res["emulated_floor_vs_real_ioctl"] == round(floor / em["real_ioctl"]["us_per_call"], 2)


def test_real_ioctl_cost_is_a_syscall_that_answers():
    r = emulator.real_ioctl_cost(calls=100, repeats=1)
    assert 0 < r["us_per_call"] < 1000 and "TCGETS" in r["ioctl"]


@needs_spin
def test_twelve_devices_symmetry_on_and_spin_agree():
    r = bench.compare_engines(SCENARIOS / "bench" / "intel-12dev-4units.toml", no_symmetry=False, with_naive=False)
    assert "explorer" not in r and r["verdicts_agree"]
    assert r["spin"]["states"] == 41136 and r["explorer_symmetry"]["states"] == 247
    assert r["spin"]["verify_seconds"] <= r["spin"]["seconds"] and r["explorer_vs_spin_verify"] > 0


def _has_commit(rev: str) -> bool:
    root = Path(__file__).parent.parent
    return (root / ".git").exists() and subprocess.run(["git", "-C", str(root), "cat-file", "-e", rev + "^{commit}"],
                                                       capture_output=True).returncode == 0


@pytest.mark.skipif(not _has_commit("6f9e82e"), reason="not a git checkout with the commit before issue 14")
def test_before_issue14_runs_the_old_code_beside_the_new_on_the_same_states():
    """benchmarks/before_issue14.py: the explorer of the commit before issue 14 (from git) and the working
    tree, alternately; both must count the same states (the script refuses otherwise)."""
    root = Path(__file__).parent.parent
    out = subprocess.run([sys.executable, str(root / "benchmarks" / "before_issue14.py"),
                          str(SCENARIOS / "explore" / "hot-unplug.toml"), "--rounds", "1"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    assert r["before_commit"] == "6f9e82e" and r["states"] == explore(HOT, "linux-6.12", symmetry=False)["states"]
    assert r["speedup"] > 0 and abs(r["speedup"] - r["seconds"]["before"] / r["seconds"]["now"]) < 0.02
    bad = subprocess.run([sys.executable, str(root / "benchmarks" / "before_issue14.py"), "missing.toml"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "no scenario" in bad.stderr


def test_before_issue14_outside_a_checkout_says_why(monkeypatch, tmp_path):
    from pyiommufd.bench import before
    monkeypatch.setattr(before, "ROOT", tmp_path)
    with pytest.raises(before.Unavailable, match="not a git checkout"):
        before.measure(SCENARIOS / "explore" / "hot-unplug.toml", rounds=1)
