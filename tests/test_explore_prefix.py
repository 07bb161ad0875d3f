"""A sweep system without hot-unplugs read off its +unplug twin's explorations (explore.explore_prefix)
must be exactly what exploring it gives: states, orders, domain counts, verdicts, hazard counts, least
traces; and a sweep that folds the two gives the verdicts of one that does not."""
import pytest

from pyiommufd import sweep
from pyiommufd.explore import explore, explore_prefix

_TIMES = ("seconds", "states_per_second")


def _same(r: dict) -> dict:
    return {k: v for k, v in r.items() if k not in _TIMES + ("derived",)}


TWINS = [s for s in sweep.enumerate_systems(4, 2) if s.unplug]
POLICIES = sweep.parse_policies() + [("ablation-intel-no-sc-checks", "kernel-auto")]


@pytest.mark.parametrize("shape", TWINS, ids=lambda s: s.label())
def test_plain_system_read_off_its_unplug_twin_equals_exploring_it(shape):
    sc, psc = sweep.scenario_for(shape), sweep.scenario_for(sweep.SystemShape(shape.units))
    for symmetry in (True, False):
        for profile, strategy in POLICIES:
            try:
                full, derived = explore_prefix(sc, psc, profile, strategy, symmetry=symmetry)
            except sweep.ScenarioError:
                continue
            assert derived is not None and derived["derived"]
            assert derived["seconds"] == 0.0
            assert _same(derived) == _same(explore(psc, profile, strategy, symmetry=symmetry)), (profile, strategy)
            # and the +unplug exploration itself is unchanged by reading the plain one off it
            assert _same(full) == _same(explore(sc, profile, strategy, symmetry=symmetry)), (profile, strategy)


def test_nothing_is_read_off_a_cut_exploration_or_a_scenario_that_is_not_a_prefix():
    shape = sweep.SystemShape.from_label("nosc[1,1] sc[1] +unplug")
    sc = sweep.scenario_for(shape)
    psc = sweep.scenario_for(sweep.SystemShape(shape.units))
    assert explore_prefix(sc, psc, "linux-6.12", max_states=5)[1] is None          # truncated
    other = sweep.scenario_for(sweep.SystemShape.from_label("nosc[1] sc[1,1]"))
    assert explore_prefix(sc, other, "linux-6.12")[1] is None                       # another system
    r = sweep.explore_system(shape, [("linux-6.12", "kernel-auto")], max_states=5, plain_too=True)
    # a cut +unplug exploration: the plain system is explored on its own (no "derived")
    assert r["also"]["system"] == "nosc[1,1] sc[1]"
    assert "derived" not in r["also"]["results"]["linux-6.12"]
    assert r["also"]["results"]["linux-6.12"]["cpu_seconds"] > 0


def test_a_folding_sweep_gives_every_system_the_results_of_exploring_it():
    # one unit per kind: no system is read off another of its class (tests/test_sweep_units.py), only twins
    shapes = [s for s in sweep.enumerate_systems(3, 2) if s.pooled() == s]
    policies = sweep.parse_policies()
    r = sweep.run_sweep(shapes, policies, jobs=1)
    twins = [s for s in shapes if not s.unplug and any(t.unplug and t.units == s.units for t in shapes)]
    assert twins and r["derived_explorations"] == len(twins) * len(policies)
    by_label = {s["label"]: s for s in r["systems"]}
    direct_states = 0
    for s in shapes:
        own = sweep.explore_system(s, policies)
        best: dict = {}
        want = sweep.reduce_system(s, own["results"], best)
        got = by_label[s.label()]["results"]
        for name, w in want.items():
            g = dict(got[name])
            g.pop("derived", None)
            assert g == {k: v for k, v in w.items() if k not in sweep._NOT_SHOWN}, (s.label(), name)
            assert ("derived" in got[name]) == (s in twins), (s.label(), name)
            if s not in twins:
                direct_states += w.get("states", 0)
    assert r["states"] == direct_states     # states explored: the folded systems' own are not counted
