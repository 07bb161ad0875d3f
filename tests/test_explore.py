"""The explorer: order dependence per era, counts, symmetry, traces that replay with the runner."""
import json
import math

import jsonschema
import pytest

from conftest import ROOT, SCENARIOS
from pyiommufd.explore import canonical, compare, device_classes, explore, replay
from pyiommufd.scenario import load

SCHEMA = json.loads((ROOT / "tests" / "contract" / "explore.schema.json").read_text())
TWO = load(SCENARIOS / "explore" / "two-devices.toml")
HOT = load(SCENARIOS / "explore" / "hot-unplug.toml")
BENCH = load(SCENARIOS / "bench" / "intel-8dev-3units.toml")


@pytest.mark.parametrize("profile,dependent,counts", [
    ("linux-6.2", False, {"2": 2}), ("linux-6.6", False, {"2": 2}), ("linux-6.6.y", False, {"2": 2}),
    ("linux-6.12", True, {"1": 1, "2": 1}), ("proposal-upgrade-keep", False, {"2": 2}),
])
def test_two_devices_order_dependence(profile, dependent, counts):
    r = explore(TWO, profile)
    jsonschema.validate(r, SCHEMA)
    assert r["order_dependent"] is dependent
    assert r["domain_counts"] == counts
    assert r["orders"] == 2 and r["events"] == 2


def test_orders_count_linear_extensions():
    # 4 attaches and 2 unplugs each after its own attach: 6! / 2 / 2
    r = explore(HOT, "linux-6.12")
    assert r["orders"] == math.factorial(6) // 4
    assert sum(r["domain_counts"].values()) == r["orders"]


def test_symmetry_cuts_states_but_not_answers():
    a = explore(BENCH, "linux-6.12", symmetry=True)
    b = explore(BENCH, "linux-6.12", symmetry=False)
    assert a["states"] * 5 < b["states"]
    for k in ("orders", "domain_counts", "order_dependent", "optimal_domains"):
        assert a[k] == b[k]
    assert [(h["kind"], h["count"]) for h in a["hazards"]] == [(h["kind"], h["count"]) for h in b["hazards"]]


def test_signatures_are_the_keys_device_parts():
    """What ``Model.orbits`` assumes: each device's signature starts with its part of the key (so the
    key's device parts are the signatures' first parts, as a multiset), and the small ints ``orbits``
    compares are equal exactly when those devices' signatures are -- for the devices that share their
    class with another device that has an event enabled, and only those.  Every state three events deep."""
    from pyiommufd.explore import Model, device_signatures
    m = Model(BENCH, "linux-6.12", symmetry=True)
    frontier = [(m.init(), frozenset())]
    checked = 0
    for _ in range(3):
        nxt = []
        for vmm, done in frontier:
            key = m.key(vmm, done)
            sigs = device_signatures(vmm, done, m.events, m.key_classes)
            assert sorted(s[0] for s in sigs.values()) == sorted(key[0])
            ids = m._signature_ids(sigs, done)
            enabled = {}
            for ei in m.actions(done):
                d = m.events[ei].args["device"]
                enabled.setdefault(m.key_classes[d], set()).add(d)
            assert set(ids) == {d for ds in enabled.values() if len(ds) > 1 for d in ds}
            for a in ids:
                for b in ids:
                    assert (ids[a] == ids[b]) == (sigs[a] == sigs[b])
            checked += len(ids) > 1 and len(set(ids.values())) < len(ids)
            nxt += [(m.next(vmm, ei), done | {ei}) for ei in m.actions(done)]
        frontier = nxt
    assert checked   # some state has two devices with one signature (an orbit to merge)


def test_state_counts_pinned():
    # Pinned like Stateright's tests pin theirs: a change here is a change of the model's state space.
    assert explore(BENCH, "linux-6.12", symmetry=True)["states"] == 72
    assert explore(BENCH, "linux-6.12", symmetry=False)["states"] == 1080


def test_hot_unplug_hazard_only_in_e3():
    kinds = {p: {h["kind"] for h in explore(HOT, p)["hazards"]} for p in ("linux-6.2", "linux-6.6", "linux-6.12")}
    assert "kvm-coherent-but-noncoherent-dma" in kinds["linux-6.12"]
    assert "kvm-coherent-but-noncoherent-dma" not in kinds["linux-6.2"] | kinds["linux-6.6"]


@pytest.mark.parametrize("profile", ["linux-6.2", "linux-6.6", "linux-6.12"])
def test_traces_replay_with_the_runner(profile):
    r = explore(HOT, profile)
    assert r["hazards"]
    for h in r["hazards"]:
        vmm = replay(HOT, profile, h["trace"])
        from pyiommufd.hazards import detect
        assert h["kind"] in {x.kind for x in detect(vmm.host)}, h


def test_replay_reaches_the_same_canonical_state():
    r = explore(TWO, "linux-6.12")
    classes = device_classes(TWO, False)
    a = replay(TWO, "linux-6.12", [{"op": "attach", "device": "gpu", "pt": "ioas"},
                                   {"op": "attach", "device": "nic", "pt": "ioas"}])
    b = replay(TWO, "linux-6.12", [{"op": "attach", "device": "nic", "pt": "ioas"},
                                   {"op": "attach", "device": "gpu", "pt": "ioas"}])
    assert canonical(a, frozenset({0, 1}), TWO.events, classes) != canonical(b, frozenset({0, 1}), TWO.events, classes)
    assert r["states"] == 5


def test_cc_aware_strategy_reaches_the_optimum_without_hazards():
    res = compare(HOT, ["linux-6.12"], ["kernel-auto", "qemu-style", "cc-aware"])
    cc = res["profiles"]["linux-6.12+cc-aware"]
    assert cc["hazards"] == [] and cc["domain_counts"] == {"1": cc["orders"]}
    assert cc["worst_order_optimal"] is True
    assert res["profiles"]["linux-6.12+kernel-auto"]["worst_order_optimal"] is False


def test_strategy_needs_hwpt_alloc():
    from pyiommufd.errors import ScenarioError
    with pytest.raises(ScenarioError, match="needs IOMMU_HWPT_ALLOC"):
        explore(TWO, "linux-6.2", "qemu-style")


def test_max_states_truncates():
    r = explore(BENCH, "linux-6.12", max_states=10)
    assert r["truncated"] is True and r["states"] <= 10


def test_no_events_is_an_error():
    from pyiommufd.errors import ScenarioError
    with pytest.raises(ScenarioError, match="no events"):
        explore(load(SCENARIOS / "thread" / "cc-first.toml"), "linux-6.12")
