"""Slots a kernel-model (or runner, client, transport) class declares ``_fixed`` are walked but not recorded by a snapshot
(snapshot.fixed_slots): a restore would not undo a write to one.  Checked here: each names a slot, and
with every slot recorded, no event of any explore scenario or small sweep system ever rebinds one."""
import importlib
import pkgutil
from pathlib import Path

import pytest

from pyiommufd import kernel, snapshot, sweep
from pyiommufd.errors import ScenarioError
from pyiommufd.explore import explore
from pyiommufd.scenario import load

SCENARIOS = Path(__file__).resolve().parents[1] / "src" / "pyiommufd" / "scenarios"
FIXED = snapshot.fixed_slots   # the declarations (the fixture below records every slot)


def _model_classes():
    """The kernel model's classes and the user-space side a snapshot records (the runner's Vmm, the client's
    files, the transport)."""
    mods = [importlib.import_module(f"pyiommufd.kernel.{m.name}")
            for m in pkgutil.walk_packages(kernel.__path__) if not m.ispkg]
    mods += [importlib.import_module(f"pyiommufd.kernel.drivers.{m.name}")
             for m in pkgutil.iter_modules(importlib.import_module("pyiommufd.kernel.drivers").__path__)]
    mods += [importlib.import_module(f"pyiommufd.{m}") for m in ("runner", "client", "transport")]
    return {c for m in mods for c in vars(m).values() if isinstance(c, type) and c.__module__ == m.__name__}


def test_fixed_slots_are_slots():
    declared = [c for c in _model_classes() if "_fixed" in c.__dict__]
    assert len(declared) >= 14
    assert {"Vmm", "Host", "VfioDevice", "Iommufd", "Driver", "EmulatedTransport"} <= {c.__name__ for c in declared}
    for c in declared:
        slots = {n for k in c.__mro__ for n in k.__dict__.get("__slots__", ())}
        assert set(c._fixed) <= slots, c


@pytest.fixture
def record_everything(monkeypatch):
    """Snapshots that record fixed slots too, and every (class, slot) a derivation finds changed."""
    monkeypatch.setattr(snapshot, "fixed_slots", lambda t: frozenset())
    snapshot._plans.clear()
    changed: set = set()
    derive = snapshot.Snapshot._derive

    def spy(self, p, shared_ids):
        ok = derive(self, p, shared_ids)
        if ok and self.changed:
            changed.update((type(p.objs[i]), p.names[i]) for i in self.changed[0])
        return ok
    monkeypatch.setattr(snapshot.Snapshot, "_derive", spy)
    yield changed
    snapshot._plans.clear()


def test_no_event_rebinds_a_fixed_slot(record_everything):
    runs = 0
    for path in sorted(SCENARIOS.rglob("*.toml")):
        sc = load(path)
        if not sc.events or len(sc.events) > 12:
            continue
        for profile in sc.profiles or [sc.profile]:
            for strategy in ("kernel-auto", "qemu-style", "cc-aware"):
                try:
                    explore(sc, profile, strategy, symmetry=True)
                    runs += 1
                except ScenarioError:
                    pass
    for shape in sweep.enumerate_systems(3, 2):
        for profile, strategy in sweep.parse_policies():
            try:
                explore(sweep.scenario_for(shape), profile, strategy, symmetry=True)
                runs += 1
            except ScenarioError:
                pass
    changed = record_everything
    assert runs > 200 and len(changed) > 15       # the spy saw the explorations' writes
    assert not {(t.__name__, n) for t, n in changed if n in FIXED(t)}
