"""The explorer's live path (one machine, states restored in place: snapshot.py) against the reference
path (a pickled copy of the whole Vmm per state, every event through client + transport): the same state
keys, with the same hazards, domain counts and least traces, and the same results, on every scenario
in scenarios/ (issue 14, rule 5)."""
import random

import pytest

from conftest import SCENARIOS, scenario_files
from pyiommufd import sweep
from pyiommufd.errors import ScenarioError
from pyiommufd.explore import explore
from pyiommufd.runner import Vmm
from pyiommufd.scenario import load
from pyiommufd.snapshot import Snapshot

EXPLORE = [p for p in scenario_files() if load(p).events]
SLOW = {"intel-10dev-3units", "intel-12dev-4units"}


def _facts(nodes):
    return {k: (n.trace, n.hazards, n.domains, n.ways, n.clean, tuple(sorted(n.seen.items())), n.outcome)
            for k, n in nodes.items()}


def _without_times(r):
    return {k: v for k, v in r.items() if k not in ("seconds", "states_per_second")}


# The 10- and 12-device bench scenarios without symmetry take 12 s per engine and run the same code
# paths as the 8-device one: they are compared with symmetry only.
CASES = [(p, sym) for p in EXPLORE for sym in (True, False) if sym or load(p).name not in SLOW]


@pytest.mark.parametrize("path, symmetry", CASES, ids=lambda x: x.stem if hasattr(x, "stem") else str(x))
def test_live_explorer_matches_the_reference(path, symmetry):
    sc = load(path)
    policies = [(p, "kernel-auto") for p in sc.profiles] + [("linux-6.12", "qemu-style"), ("linux-6.12", "cc-aware")]
    if path.parent.name == "bench" and not symmetry:   # the large ones: the headline policy only
        policies = [("linux-6.12", "kernel-auto")]
    for profile, strategy in policies:
        live, ref = {}, {}
        a = explore(sc, profile, strategy, symmetry=symmetry, nodes_out=live)
        b = explore(sc, profile, strategy, symmetry=symmetry, live=False, nodes_out=ref)
        assert _without_times(a) == _without_times(b), (profile, strategy)
        assert _facts(live) == _facts(ref), (profile, strategy)


def _state(vmm):
    return (vmm.host.snapshot(), dict(vmm.names), dict(vmm.kinds), sorted(vmm.cdevs), sorted(vmm.devfds),
            sorted(vmm.in_kvm), repr(vmm.us))


@pytest.mark.parametrize("path", scenario_files(), ids=lambda p: str(p.relative_to(SCENARIOS)))
def test_restore_in_place_round_trips(path):
    """Play the steps keeping a snapshot after each (derived from the previous one, as the explorer does);
    then, in a shuffled order, restore each and replay the next step: the same host state, the same result."""
    sc = load(path)
    for profile in sc.profiles:
        vmm = Vmm(sc, profile)
        shared = frozenset(id(o) for o in vmm._shared_parts())
        snaps, states, results = [], [], []
        prev = None
        for step in sc.steps:
            prev = Snapshot(vmm, shared, prev)
            snaps.append(prev)
            states.append(_state(vmm))
            results.append(vmm.apply(step))
        order = list(range(len(snaps)))
        random.Random(len(order)).shuffle(order)
        for i in order:
            assert snaps[i].restore() is vmm
            assert _state(vmm) == states[i], (profile, i)
            assert vmm.apply(sc.steps[i]) == results[i], (profile, i)


@pytest.mark.parametrize("path", scenario_files(), ids=lambda p: str(p.relative_to(SCENARIOS)))
def test_undo_puts_back_what_restore_puts_back(path):
    """After each step, the snapshot derived from the one before knows what differs (``changed``); undoing
    just that (``Snapshot.undo``, what the explorer does between siblings) gives the state a full restore
    gives, and replaying the step gives the same result."""
    sc = load(path)
    for profile in sc.profiles:
        vmm = Vmm(sc, profile)
        shared = frozenset(id(o) for o in vmm._shared_parts())
        prev = Snapshot(vmm, shared)
        undone = 0
        for step in sc.steps:
            before = _state(vmm)
            result = vmm.apply(step)
            child = Snapshot(vmm, shared, prev)
            if child.changed is None:   # not derived (a slot was deleted or set anew): nothing to undo
                prev = child
                continue
            assert prev.undo(child.changed) is vmm
            assert _state(vmm) == before, (profile, step.op)
            assert vmm.apply(step) == result, (profile, step.op)
            prev = Snapshot(vmm, shared, prev)
            undone += 1
        assert undone, "no step was undone: the test saw nothing"


SWEEP_SAMPLE = [s for i, s in enumerate(sweep.enumerate_systems(4, 2)) if i % 2 == 0]


@pytest.mark.parametrize("shape", SWEEP_SAMPLE, ids=lambda s: s.label())
def test_live_explorer_matches_the_reference_on_sweep_systems(shape):
    """Symmetric successors (``Model.orbits``) against running every event, under every default policy and
    the ablation that lets non-SC devices into upgraded CC domains (``upgraded_over`` in the signature)."""
    sc = sweep.scenario_for(shape)
    for profile, strategy in sweep.parse_policies() + [("ablation-intel-no-sc-checks", "kernel-auto")]:
        live, ref = {}, {}
        try:
            a = explore(sc, profile, strategy, nodes_out=live)
        except ScenarioError:
            continue
        b = explore(sc, profile, strategy, live=False, nodes_out=ref)
        assert _without_times(a) == _without_times(b), (profile, strategy)
        assert _facts(live) == _facts(ref), (profile, strategy)
