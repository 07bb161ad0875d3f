"""Sweeps (enumeration, verdicts, a hand-computed case) and the sharded explorer in one process (no Ray)."""
import itertools
import json
import re
import subprocess
import sys
from collections import Counter

import pytest
from conftest import ROOT, SCENARIOS

from pyiommufd.distributed import omission_bound, pack, sharded_explore, shared_objects, unpack
from pyiommufd.explore import explore
from pyiommufd.report.html import sweep_html
from pyiommufd.scenario import load
from pyiommufd.sweep import SystemShape, UnitShape, enumerate_systems, parse_policies, run_sweep, scenario_for

HOT = load(SCENARIOS / "explore" / "hot-unplug.toml")
BENCH = load(SCENARIOS / "bench" / "intel-8dev-3units.toml")
VOLATILE = ("seconds", "states_per_second", "engine", "fingerprint")


def same(a: dict, b: dict) -> dict:
    """The fields that differ between two explore results, timing and engine aside."""
    keys = (set(a) | set(b)) - set(VOLATILE)
    return {k: (a.get(k), b.get(k)) for k in keys if a.get(k) != b.get(k)}


# -- enumeration ----------------------------------------------------------------------------------
def test_hand_counted_systems_up_to_two_devices():
    labels = [s.label() for s in enumerate_systems(2, 2)]
    assert sorted(labels) == sorted([
        "sc[1]", "nosc[1]", "nosc[1] +unplug",                                 # one device
        "sc[1,1]", "sc[2]", "nosc[1,1]", "nosc[2]", "nosc[1,1] +unplug",       # two, one unit
        "sc[1] sc[1]", "nosc[1] sc[1]", "nosc[1] nosc[1]",                     # two, two units
        "nosc[1] sc[1] +unplug", "nosc[1] nosc[1] +unplug"])
    assert labels[0] in ("nosc[1]", "sc[1]")      # size order: the smallest first


def _labelled_brute(n: int, max_units: int) -> int:
    """Labelled systems: n named devices, k named non-empty units each SC or not, groups within units."""
    def set_partitions(items):
        if not items:
            yield []
            return
        first, rest = items[0], items[1:]
        for p in set_partitions(rest):
            yield [[first]] + p
            for i in range(len(p)):
                yield p[:i] + [[first] + p[i]] + p[i + 1:]
    total = 0
    for k in range(1, max_units + 1):
        for assign in itertools.product(range(k), repeat=n):
            if len(set(assign)) != k:
                continue
            ways = 1
            for u in range(k):
                members = [d for d in range(n) if assign[d] == u]
                ways *= 2 * sum(1 for _ in set_partitions(members))
            total += ways
    return total


@pytest.mark.parametrize("n,units", [(1, 1), (2, 2), (3, 2), (3, 3), (4, 2)])
def test_labelled_multiplicity_matches_brute_force(n, units):
    shapes = [s for s in enumerate_systems(n, units, min_devices=n, unplug="none")]
    assert sum(s.labelled() for s in shapes) == _labelled_brute(n, units)
    assert len(set(shapes)) == len(shapes)


def test_bounds_and_options():
    assert all(s.devices <= 4 and len(s.units) <= 2 for s in enumerate_systems(4, 2))
    assert all(all(u.sc for u in s.units) for s in enumerate_systems(3, 3, sc="on"))
    assert all(g == 1 for s in enumerate_systems(4, 3, groups="own") for u in s.units for g in u.groups)
    assert all(s.unplug for s in enumerate_systems(3, 2, unplug="only"))
    assert len(enumerate_systems(6, 3)) == 597
    with pytest.raises(ValueError):
        enumerate_systems(0, 1)


def test_labels_round_trip_and_scenario():
    for s in enumerate_systems(4, 3):
        assert SystemShape.from_label(s.label()) == s
    s = SystemShape.from_label("sc[2] nosc[1,1] +unplug")
    assert s.units == (UnitShape(False, (1, 1)), UnitShape(True, (2,)))
    sc = scenario_for(s)
    groups = Counter(d.group for d in sc.system.devices)
    assert sorted(groups.values()) == [1, 1, 2]
    assert [e.op for e in sc.events].count("hot_unplug") == 2 and s.events == 6
    assert all(not u.snoop_control for u in sc.system.units if u.name == "dmar0")
    with pytest.raises(ValueError, match="sc\\[1,1\\]"):
        SystemShape.from_label("cc[1]")


def test_parse_policies():
    assert parse_policies("linux-6.12,linux-6.12+cc-aware") == [("linux-6.12", "kernel-auto"),
                                                               ("linux-6.12", "cc-aware")]
    assert parse_policies(None, "linux-6.6", "kernel-auto,qemu-style") == [("linux-6.6", "kernel-auto"),
                                                                           ("linux-6.6", "qemu-style")]
    with pytest.raises(ValueError, match="unknown profile"):
        parse_policies("linux-9.9")
    with pytest.raises(ValueError, match="unknown strategy"):
        parse_policies("linux-6.12+fast")


# -- the hand-computed case ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small():
    return run_sweep(enumerate_systems(2, 2), parse_policies(), jobs=1)


def test_hand_computed_counts(small):
    """Up to 2 devices / 2 units (13 shapes), worked out by hand from SPEC.md section 3 and 7:
    * E3 (6.12, want-cc, qemu-style): {non-CC, CC} is order-dependent (1 domain non-CC first, 2 CC first),
      with or without the unplug; after unplugging the non-CC device, non-CC first leaves the CC-capable
      one in a non-CC domain with KVM counting no non-coherent device (H4); CC first ends with 2 domains.
    * E1/E2 (6.2, 6.6): 2 domains for {non-CC, CC} in either order; every +unplug system flips KVM's
      non-coherent count 1 -> 0 while the guest runs, without the TDP zap (H5): 4 systems.
    * upgrade-keep: 2 domains for {non-CC, CC}, nothing else.  cc-aware: nothing."""
    exp = {
        "linux-6.2": {"stale-memtype-after-flip": 4, "not-domain-minimal": 1},
        "linux-6.6": {"stale-memtype-after-flip": 4, "not-domain-minimal": 1},
        "linux-6.12": {"order-dependent": 2, "kvm-coherent-but-noncoherent-dma": 1, "not-domain-minimal": 1},
        "proposal-want-cc": {"order-dependent": 2, "kvm-coherent-but-noncoherent-dma": 1, "not-domain-minimal": 1},
        "proposal-upgrade-keep": {"not-domain-minimal": 1},
        "linux-6.12+qemu-style": {"order-dependent": 2, "kvm-coherent-but-noncoherent-dma": 1,
                                  "not-domain-minimal": 1},
        "linux-6.12+cc-aware": {},
    }
    assert small["bound"]["systems"] == 13 and small["bound"]["labelled_systems"] == 22
    for name, want in exp.items():
        p = small["policies"][name]
        assert {k: v for k, v in p["counts"].items() if v} == want, name
        assert p["systems"] == 13
        assert p["verdict"]["all"] is (not want)
    ce = small["policies"]["linux-6.12"]["counterexamples"]
    assert ce["order-dependent"]["system"] == "nosc[1] sc[1]"
    traces = [[t["device"] for t in o["trace"]] for o in ce["order-dependent"]["trace"]]
    assert sorted(traces) == [["gpu0", "nic0"], ["nic0", "gpu0"]]
    assert ce["kvm-coherent-but-noncoherent-dma"]["system"] == "nosc[1] sc[1] +unplug"
    assert [t["op"] for t in ce["kvm-coherent-but-noncoherent-dma"]["trace"]][-1] == "hot_unplug"
    assert ce["not-domain-minimal"]["trace"] == [{"op": "attach", "device": "nic0", "pt": "ioas"},
                                                 {"op": "attach", "device": "gpu0", "pt": "ioas"}]
    assert small["policies"]["linux-6.2"]["verdict"]["smallest_failure"] == "nosc[1] +unplug"
    assert small["verdicts"]["linux-6.12+cc-aware"] == ("policy linux-6.12+cc-aware is order-independent, "
                                                        "hazard-free and domain-minimal for all 13 systems up to "
                                                        "2 devices and 2 units")
    assert small["min_domains_violations"] == []
    assert abs(small["policies"]["linux-6.12"]["share"]["order-dependent"] - 2 / 13) < 1e-3
    assert small["policies"]["linux-6.12"]["share_labelled"]["order-dependent"] == round((4 + 4) / 22, 4)


def test_skipped_policy_is_reported():
    r = run_sweep(enumerate_systems(1, 1), [("linux-6.2", "qemu-style")], jobs=1)
    p = r["policies"]["linux-6.2+qemu-style"]
    assert p["systems"] == 0 and p["skipped"] == 3 and p["verdict"]["all"] is False
    assert "not run" in r["verdicts"]["linux-6.2+qemu-style"]


def test_symmetry_does_not_change_a_verdict():
    shapes = enumerate_systems(3, 2)
    pol = [("linux-6.2", "kernel-auto"), ("linux-6.12", "kernel-auto"), ("linux-6.12", "cc-aware")]
    a = run_sweep(shapes, pol, jobs=1)
    b = run_sweep(shapes, pol, jobs=1, symmetry=False)
    for name in a["policies"]:
        assert a["policies"][name]["counts"] == b["policies"][name]["counts"]
        assert a["policies"][name]["verdict"] == b["policies"][name]["verdict"]
    for x, y in zip(a["systems"], b["systems"]):   # per system: everything but the state count
        for name in x["results"]:
            assert dict(x["results"][name], states=0) == dict(y["results"][name], states=0), (x["label"], name)
    assert a["states"] < b["states"]


def test_process_pool_equals_one_process(small):
    r = run_sweep(enumerate_systems(2, 2), parse_policies(), jobs=2)
    assert r["policies"] == small["policies"] and r["systems"] == small["systems"]


def test_sweep_html(small, tmp_path):
    page = sweep_html(small)
    assert page.startswith("<!DOCTYPE html>") and "<script" not in page
    assert not re.search(r'(src|href)="https?://', page)
    assert "nosc[1] sc[1] +unplug" in page and "linux-6.12+cc-aware" in page and "Smallest counterexamples" in page


# -- the sharded explorer (in this process) ---------------------------------------------------------
@pytest.mark.parametrize("sc,profile,strategy", [
    (HOT, "linux-6.2", "kernel-auto"), (HOT, "linux-6.12", "kernel-auto"), (HOT, "linux-6.12", "qemu-style"),
    (HOT, "linux-6.12", "cc-aware"), (HOT, "proposal-upgrade-keep", "kernel-auto"),
    (BENCH, "linux-6.12", "kernel-auto"),
])
@pytest.mark.parametrize("shards", [1, 3])
def test_sharded_equals_in_process(sc, profile, strategy, shards):
    a = explore(sc, profile, strategy)
    b = sharded_explore(sc, profile, strategy, shards=shards)
    assert same(a, b) == {}
    assert b["engine"]["shards"] == shards
    if shards > 1:
        assert b["engine"]["states_sent_between_shards"] > 0


def test_sharded_equals_in_process_without_symmetry():
    sc = scenario_for(SystemShape.from_label("nosc[1] sc[2,1] +unplug"))
    assert same(explore(sc, "linux-6.2", symmetry=False), sharded_explore(sc, "linux-6.2", symmetry=False,
                                                                          shards=2)) == {}


@pytest.mark.parametrize("max_states", [1, 2, 5, 9, 20, 27, 28, 40])
def test_sharded_truncates_like_in_process(max_states):
    a = explore(HOT, "linux-6.12", max_states=max_states)
    for k in (1, 2, 4):
        assert same(a, sharded_explore(HOT, "linux-6.12", max_states=max_states, shards=k)) == {}


def test_fingerprints():
    r = sharded_explore(BENCH, "linux-6.12", shards=2, fingerprint_bits=64)
    assert same(r, explore(BENCH, "linux-6.12")) == {}
    assert r["fingerprint"]["bits"] == 64
    assert r["fingerprint"]["omission_probability_bound"] == pytest.approx(72 * 71 / 2 ** 65)
    tiny = sharded_explore(HOT, "linux-6.12", fingerprint_bits=3)   # 8 fingerprints a level: states go missing
    assert tiny["states"] < 28 and tiny["fingerprint"]["omission_probability_bound"] == 1.0
    assert omission_bound(10 ** 6, 64) < 3e-8 and omission_bound(10 ** 8, 64) < 3e-4


def test_states_pack_and_unpack():
    from pyiommufd.explore import Model
    m = Model(HOT, "linux-6.12")
    a = m.next(m.init(), 0)
    shared = shared_objects(a)
    blob = pack(a, shared)
    b = unpack(blob, shared)
    assert m.key(a, frozenset({0})) == m.key(b, frozenset({0}))
    assert b.scenario is a.scenario and b.host.mem is a.host.mem
    assert len(blob) < 20000


# -- CLI ---------------------------------------------------------------------------------------------
def cli(*args, env_extra=None):
    env = {"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "pyiommufd", *args], check=False, capture_output=True, text=True, cwd=ROOT,
                          env=env, timeout=300)


def test_cli_sweep_json_only_json_on_stdout():
    r = cli("sweep", "--max-devices", "2", "--max-units", "1", "--policies", "linux-6.12,linux-6.12+cc-aware",
            "--workers", "1", "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["bound"]["systems"] == 8 and set(res["policies"]) == {"linux-6.12", "linux-6.12+cc-aware"}
    assert "systems explored" in r.stderr


def test_cli_sweep_table_and_html(tmp_path):
    out = tmp_path / "sweep.html"
    r = cli("sweep", "--system", "nosc[1] sc[1]", "--policies", "linux-6.6,linux-6.12", "-q", "--html", str(out))
    assert r.returncode == 0, r.stderr
    assert "linux-6.12" in r.stdout and "order-dep." in r.stdout and "fails" in r.stdout
    assert "attach gpu0, attach nic0" in r.stdout
    assert out.read_text().startswith("<!DOCTYPE html>")


@pytest.mark.parametrize("args,needle", [
    (("sweep", "--max-devices", "0"), "at least 1"),
    (("sweep", "--policies", "linux-9"), "unknown profile"),
    (("sweep", "--system", "sc[x]"), "must be integers"),
    (("sweep", "--workers", "0"), "at least 1"),
    (("sweep", "--address", "auto"), "needs --engine ray"),
    (("sweep", "--policies", "linux-6.2", "--profiles", "linux-6.6"), "give it or"),
    (("explore", "scenarios/explore/two-devices.toml", "--fingerprint-bits", "0"), "between 1 and 256"),
    (("explore", "scenarios/explore/two-devices.toml", "--workers", "2"), "needs --engine ray"),
    (("sweep", "--engine", "spark"), "invalid choice"),
])
def test_cli_bad_input_exits_2(args, needle):
    r = cli(*args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert needle in r.stderr and "Traceback" not in r.stderr


def test_cli_explore_fingerprints_in_process():
    r = cli("explore", "scenarios/explore/hot-unplug.toml", "--fingerprint-bits", "64", "--json", "-q")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["states"] == 28 and res["fingerprint"]["omission_probability_bound"] < 1e-15


def test_cli_without_ray_says_how_to_get_it(tmp_path):
    fake = tmp_path / "noray" / "ray"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('no ray here')\n")
    env = {"PYTHONPATH": f"{tmp_path / 'noray'}:{ROOT / 'src'}"}
    for args in (("explore", "scenarios/explore/two-devices.toml", "--engine", "ray"),
                 ("sweep", "--max-devices", "1", "--engine", "ray")):
        r = cli(*args, env_extra=env)
        assert r.returncode == 3, r.stderr
        assert "pip install 'pyiommufd[ray]'" in r.stderr and "Traceback" not in r.stderr


def test_min_domains_definition():
    assert SystemShape.from_label("nosc[1] sc[1]").min_domains() == 1
    assert SystemShape.from_label("nosc[1] +unplug").min_domains() == 0
    assert SystemShape.from_label("nosc[1] nosc[2] +unplug").min_domains() == 1   # the shared group stays
    assert SystemShape.from_label("nosc[1] nosc[2] +unplug").events == 4


def test_verdict_names_a_restricted_enumeration():
    r = run_sweep(enumerate_systems(3, 2, groups="own", unplug="none"), [("linux-6.12", "cc-aware")], jobs=1)
    assert r["verdicts"]["linux-6.12+cc-aware"] == (
        "policy linux-6.12+cc-aware is order-independent, hazard-free and domain-minimal for all 13 systems up to "
        "3 devices and 2 units with one group per device, without hot-unplug")
