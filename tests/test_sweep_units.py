"""Sweep systems that differ only in which unit a group sits behind are one class (sweep.read_off_units):
the same scenario but for the units, and -- what the sweep relies on -- the same explore results, trace
for trace, under every policy.  Checked here by exploring every member of every class on its own."""
import pytest

from pyiommufd import sweep
from pyiommufd.sweep import SystemShape

POLICIES = sweep.parse_policies() + [("ablation-intel-no-sc-checks", "kernel-auto")]
_TIMES = ("seconds", "cpu_seconds")


def _classes(shapes) -> dict[str, list[SystemShape]]:
    out: dict[str, list[SystemShape]] = {}
    for s in shapes:
        out.setdefault(s.pooled().label(), []).append(s)
    return out


def _results(shape: SystemShape, symmetry: bool = True) -> dict:
    r = sweep.explore_system(shape, POLICIES, symmetry=symmetry)["results"]
    return {name: {k: v for k, v in x.items() if k not in _TIMES} for name, x in r.items()}


def test_pooled_keeps_the_groups_and_merges_units_of_one_kind():
    s = SystemShape.from_label("nosc[1] nosc[2,1] sc[3] sc[1,1] +unplug")
    assert s.pooled() == SystemShape.from_label("nosc[2,1,1] sc[3,1,1] +unplug")
    assert s.pooled().devices == s.devices and s.pooled().unpluggable == s.unpluggable
    assert SystemShape.from_label("sc[1] sc[1]").pooled().label() == "sc[1,1]"
    assert SystemShape.from_label("nosc[2]").pooled().label() == "nosc[2]"


def test_a_class_is_one_scenario_but_for_the_units():
    for members in _classes(sweep.enumerate_systems(6, 3)).values():
        base = sweep.scenario_for(members[0])
        for m in members[1:]:
            sc = sweep.scenario_for(m)
            assert sc.steps == base.steps and [e.to_json() for e in sc.events] == [e.to_json() for e in base.events]
            assert [(d.name, d.group) for d in sc.system.devices] == [(d.name, d.group) for d in base.system.devices]
            sc_of = {u.name: u.snoop_control for u in sc.system.units}
            base_of = {u.name: u.snoop_control for u in base.system.units}
            # each device behind a unit of the same kind; which unit, and how many, is all that differs
            assert [sc_of[d.unit] for d in sc.system.devices] == [base_of[d.unit] for d in base.system.devices]


def test_representatives_have_fewest_units_and_twins_stay_twins():
    shapes = sweep.enumerate_systems(6, 3)
    rep = sweep.read_off_units(shapes)
    by_label = {s.label(): s for s in shapes}
    for label, r in rep.items():
        s, t = by_label[label], by_label[r]
        assert s.pooled() == t.pooled() and len(t.units) <= len(s.units) and label != r
        if s.unplug and SystemShape(s.units).label() in rep:
            assert rep[SystemShape(s.units).label()] == SystemShape(t.units).label()
    assert all(r not in rep for r in rep.values())     # a representative is explored, not read off
    # results at hand are preferred: the calibration's systems are not explored twice
    some = next(label for label in rep)
    assert some not in sweep.read_off_units(shapes, prefer={some})


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5])
def test_every_member_of_a_class_explores_to_its_representatives_results(n):
    shapes = sweep.enumerate_systems(n, 3, min_devices=n)
    rep = sweep.read_off_units(shapes)
    assert rep or n == 1
    by_label = {s.label(): s for s in shapes}
    own = {}
    for label, r in rep.items():
        if r not in own:
            own[r] = _results(by_label[r])
        assert _results(by_label[label]) == own[r], (label, r)


def test_the_same_without_symmetry():
    shapes = sweep.enumerate_systems(4, 3, min_devices=3)
    rep = sweep.read_off_units(shapes)
    by_label = {s.label(): s for s in shapes}
    for label, r in rep.items():
        assert _results(by_label[label], False) == _results(by_label[r], False), (label, r)


def test_a_sweep_gives_every_member_its_own_results_and_counts_only_what_it_explores():
    shapes = sweep.enumerate_systems(3, 3)
    policies = sweep.parse_policies()
    r = sweep.run_sweep(shapes, policies, jobs=1)
    explored = {s.label() for s in sweep.explored_systems(shapes)}
    assert r["derived_explorations"] == (len(shapes) - len(explored)) * len(policies)
    direct_states = 0
    for s in r["systems"]:
        want = sweep.reduce_system(SystemShape.from_label(s["label"]),
                                   sweep.explore_system(SystemShape.from_label(s["label"]), policies)["results"], {})
        for name, w in want.items():
            got = dict(s["results"][name])
            assert ("derived" in got) == (s["label"] not in explored), (s["label"], name)
            got.pop("derived", None)
            assert got == {k: v for k, v in w.items() if k not in sweep._NOT_SHOWN}, (s["label"], name)
            if s["label"] in explored:
                direct_states += w["states"]
    assert r["states"] == direct_states
