"""How big a sweep is, before it runs: systems, explorations, states and time, and the bound.

``pyiommufd sweep`` prints this first and refuses (exit 2) a sweep whose estimated wall time is beyond
``BOUND_SECONDS`` unless ``--force`` is given (DESIGN.md: "prints the sweep's size and estimate first;
beyond its bound it exits 2 unless --force").

* **Systems** are counted size by size (``sweep.systems_of_size``) and counting stops as soon as the
  estimate has passed the bound: ``--max-devices 100000`` is refused after a dozen sizes instead of
  being enumerated for ever.
* **States.**  An exploration visits at least one state per set of done events, up to the symmetry of
  interchangeable devices (``done_sets``): the explorer's canonical key holds each device's class and
  done events, so two such sets never share a state, and every set is reachable (the only constraint
  on an event is an unplug after its own attach).  That lower bound (exact with one device) is scaled
  by the ratio of states to it measured on a calibration sample.
* **Time.**  The calibration explores a few of the sweep's own systems in this process -- the largest
  whose lower bound fits ``CALIBRATION_CAP``, within ``CALIBRATION_BUDGET`` CPU seconds -- and measures
  CPU seconds per state; estimated states x CPU per state / workers.  Its results are handed to the
  sweep, which does not explore those systems again.  Larger systems cost a little more per state than
  the sample (the state grows), so far beyond the sample the estimate is low rather than high.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from .sweep import SystemShape, at_hand, explore_system, explored_systems

BOUND_SECONDS = 3600.0        # estimated wall time beyond which a sweep needs --force
CALIBRATION_BUDGET = 1.5      # CPU seconds the calibration may take (at least one system is explored)
CALIBRATION_CAP = 700         # lower-bound states (all policies) of a system the calibration may take
CALIBRATION_SYSTEMS = 4
_CALIBRATE_AT = 20000         # lower-bound states counted before the calibration runs (it runs at the end if fewer)


def done_sets(shape: SystemShape, symmetry: bool = True) -> int:
    """Reachable sets of done events of the sweep's scenario for ``shape`` (sweep.scenario_for), up to
    the explorer's symmetry (explore.device_classes): a lower bound on the states of one exploration.

    Classes: devices alone in their group behind units with Snoop Control (attach); alone behind units
    without it (attach, and hot-unplug after it in the +unplug variant); the devices of each shared
    group (attach).  A class of k devices with one event each has k+1 multisets of done events; with
    attach and unplug, (k+1)(k+2)/2.  Without symmetry every device counts apart: 2 or 3 each."""
    own_sc = sum(1 for u in shape.units if u.sc for g in u.groups if g == 1)
    own_nosc = shape.unpluggable
    unplugged = own_nosc if shape.unplug else 0
    if not symmetry:
        return 2 ** (shape.devices - unplugged) * 3 ** unplugged
    out = (own_sc + 1) * ((own_nosc + 1) * (own_nosc + 2) // 2 if shape.unplug else own_nosc + 1)
    for u in shape.units:
        for g in u.groups:
            if g > 1:
                out *= g + 1
    return out


@dataclass
class Calibration:
    """A few of the sweep's systems explored up front: the measured states per lower-bound state and CPU
    seconds per state.  ``results``: label -> explore_system result, for the sweep to keep."""
    results: dict = field(default_factory=dict)
    states: int = 0
    lower_bound: int = 0
    cpu_seconds: float = 0.0

    @property
    def ratio(self) -> float:
        return self.states / self.lower_bound if self.lower_bound else 1.0

    @property
    def cpu_per_state(self) -> float:
        return self.cpu_seconds / self.states if self.states else 0.0

    def to_json(self) -> dict:
        return {"systems": list(self.results), "states": self.states, "lower_bound_states": self.lower_bound,
                "states_per_lower_bound_state": round(self.ratio, 3), "cpu_seconds": round(self.cpu_seconds, 3),
                "cpu_ms_per_state": round(1000 * self.cpu_per_state, 4)}


def calibrate(candidates: list[SystemShape], policies: list, *, symmetry: bool = True,
              max_states: int | None = None) -> Calibration:
    """Explore the largest candidates whose lower bound fits CALIBRATION_CAP (the smallest one if none
    does), up to CALIBRATION_SYSTEMS of them within CALIBRATION_BUDGET CPU seconds."""
    def bound(s):
        return done_sets(s, symmetry) * len(policies)
    labels = {s.label() for s in candidates}
    candidates = explored_systems(candidates) or candidates    # not a system the sweep reads off another
    fit = sorted((s for s in candidates if bound(s) <= CALIBRATION_CAP), key=lambda s: (-bound(s), s.size_key()))
    sample = fit[:CALIBRATION_SYSTEMS] or [min(candidates, key=lambda s: (bound(s), s.size_key()))]
    cal = Calibration()
    for s in sample:
        cpu = time.process_time()
        # a +unplug system gives its plain twin too, as in the sweep (``also``), so that is not explored again
        r = explore_system(s, policies, max_states, symmetry, plain_too=SystemShape(s.units).label() in labels)
        cal.cpu_seconds += time.process_time() - cpu
        cal.results[s.label()] = r
        cal.states += sum(x.get("states", 0) for x in r["results"].values())
        cal.lower_bound += bound(s)
        if cal.cpu_seconds >= CALIBRATION_BUDGET:
            break
    return cal


@dataclass
class SweepSize:
    shapes: list[SystemShape]
    complete: bool                 # False: counting stopped at the bound; shapes are the ones counted
    counted_devices: int           # systems of up to this many devices were counted
    max_devices: int | None
    policies: int
    workers: int
    lower_bound: int               # states, summed over the explorations the sweep runs (folded systems aside)
    states: float                  # estimated
    cpu_seconds: float
    seconds: float                 # estimated wall time on the workers
    calibration: Calibration
    bound_seconds: float = BOUND_SECONDS
    explored: list = field(default_factory=list)   # the shapes the sweep explores (sweep.explored_systems)

    @property
    def explorations(self) -> int:
        return len(self.shapes) * self.policies

    @property
    def folded(self) -> int:
        """Explorations read off another system's (sweep.explored_systems): a system of the same class with
        fewer units, or the +unplug twin of a system without hot-unplugs."""
        return (len(self.shapes) - len(self.explored)) * self.policies

    def weights(self, symmetry: bool = True) -> dict[str, float]:
        """System -> its share of the work for the progress ETA: its lower bound of states if the sweep explores
        it (after the calibration, whose systems it keeps), 0 if it is read off another's explorations."""
        out = dict.fromkeys((s.label() for s in self.shapes), 0.0)
        out.update({s.label(): float(done_sets(s, symmetry))
                    for s in explored_systems(self.shapes, at_hand(self.calibration.results))})
        return out

    @property
    def beyond_bound(self) -> bool:
        return self.seconds > self.bound_seconds

    def to_json(self) -> dict:
        return {"systems": len(self.shapes), "complete": self.complete, "explorations": self.explorations,
                "policies": self.policies, "folded_explorations": self.folded, "workers": self.workers, "lower_bound_states": self.lower_bound,
                "estimated_states": round(self.states), "estimated_cpu_seconds": round(self.cpu_seconds, 1),
                "estimated_seconds": round(self.seconds, 1), "bound_seconds": self.bound_seconds,
                "calibration": self.calibration.to_json()}

    def sentence(self) -> str:
        """What the CLI prints before starting (or when refusing)."""
        at_least = "" if self.complete else "at least "
        counted = "" if self.complete else (f" (counted up to {self.counted_devices} devices of "
                                            f"{self.max_devices}; counting stopped at the bound)")
        cal = self.calibration
        folded = f" ({self.folded:,} read off other systems' explorations)" if self.folded else ""
        return (f"sweep: {at_least}{_n(len(self.shapes), 'system')}{counted} x {_n(self.policies, 'policy')} = "
                f"{at_least}{_n(self.explorations, 'exploration')}"
                f"{folded}; estimated {at_least}{_count(self.states)} states, "
                f"{duration(self.cpu_seconds)} CPU, {duration(self.seconds)} on {_n(self.workers, 'worker')} (from "
                f"{_n(len(cal.results), 'system')} explored first: {cal.ratio:.2f} states per lower-bound state, "
                f"{1000 * cal.cpu_per_state:.2f} ms CPU per state)")


def _n(k: int, noun: str) -> str:
    return f"{k:,} {noun if k == 1 else (noun[:-1] + 'ies' if noun.endswith('y') else noun + 's')}"


def _count(x: float) -> str:
    return f"{x:,.0f}" if x < 1e7 else f"{x:.2g}".replace("e+0", "e").replace("e+", "e")


def duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds < 2 * 365 * 86400:
        return f"{seconds / 86400:.0f} days"
    return f"{seconds / (365 * 86400):.2g} years"


def size_sweep(sizes, policies: list, *, workers: int, symmetry: bool = True, max_states: int | None = None,
               force: bool = False, max_devices: int | None = None, bound_seconds: float = BOUND_SECONDS,
               ) -> SweepSize:
    """Count the sweep (``sizes``: lists of shapes, one per device count, smallest first), calibrate on its
    own systems and estimate.  Without ``force`` counting stops once the estimate passes the bound.
    A batch's explored systems are worked out once: a class and a +unplug twin never span two batches
    (they have one device count)."""
    shapes: list[SystemShape] = []
    explored: list[SystemShape] = []
    lower = 0
    cal: Calibration | None = None
    counted = 0
    complete = True
    P = len(policies)

    def per_exploration(s: SystemShape, ratio: float) -> float:
        est = done_sets(s, symmetry) * ratio
        return min(est, max_states) if max_states else est

    est_states = 0.0
    for batch in sizes:
        shapes.extend(batch)
        mine = explored_systems(batch)
        explored.extend(mine)
        lower += sum(done_sets(s, symmetry) for s in mine) * P
        counted = max([counted] + [s.devices for s in batch])
        if cal is None and lower >= _CALIBRATE_AT:
            cal = calibrate(shapes, policies, symmetry=symmetry, max_states=max_states)
        if cal is not None and not force:
            est_states = sum(per_exploration(s, cal.ratio) for s in explored) * P
            if est_states * cal.cpu_per_state / workers > bound_seconds:
                complete = counted >= (max_devices or counted)
                break
    if cal is None:
        cal = calibrate(shapes, policies, symmetry=symmetry, max_states=max_states) if shapes else Calibration()
    est_states = sum(per_exploration(s, cal.ratio) for s in explored) * P
    cpu = est_states * cal.cpu_per_state
    return SweepSize(shapes, complete, counted, max_devices, P, workers, lower, est_states, cpu, cpu / workers, cal,
                     bound_seconds, explored)
