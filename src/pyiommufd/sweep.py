"""Policy sweeps: every system up to a bound, explored under every policy, with verdicts.

The seed thread asks which cache-coherency policy gives the same result whatever the order,
breaks no device and uses the fewest domains -- *for every device set*, not one.  A sweep
answers it by enumeration:

* **Systems** (``enumerate_systems``): Intel VT-d, a VM (``kvm = true``), 1..N devices over
  1..U remapping units, each unit with Snoop Control on or off, the devices of each unit split
  into iommu groups (every device its own group, or any partition of the unit's devices into
  shared groups; a group never spans two units).  Each system is explored once per *shape*:
  a shape is the multiset of units, a unit being (Snoop Control, the multiset of its group
  sizes).  Two labelled systems that differ by renaming units or devices have one shape.  Units
  without devices are left out: nothing in the model looks at a unit no device sits behind.
  **Systems that differ only in which unit a group sits behind are one class** (``read_off_units``):
  ``nosc[1] nosc[1] sc[2,1]`` and ``nosc[1,1] sc[2] sc[1]`` are both ``nosc[1,1] sc[2,1]`` (``pooled``)
  with the groups spread over more units.  The sweep's units differ only in Snoop Control, and a unit
  enters every decision the model takes only through its capabilities, never its name: in v6.12.117
  drivers/iommu/intel/iommu.c, prepare_domain_attach_device reads the unit's ecap (SC, SSADS) and its
  width, domain_support_force_snooping the ecap of each attached device's unit (intel.py's
  ``IntelDriver._unit`` is the model's only way to a unit).  So a class's scenarios (``scenario_for``
  orders the groups the same way whatever unit they sit behind) have the same states, orders and
  traces; each class is explored once and every other member takes its results (``derived``).
  tests/test_sweep_units.py checks it: every system up to 5 devices and 3 units, every policy,
  explored on its own, gives exactly its class representative's results.
  ``labelled`` gives how many labelled systems (named devices, named units) a shape stands for:
  n! k! / |Aut(shape)|.  Shares in the report count **shapes**, each once (unweighted); the JSON
  also carries the labelled-weighted shares.
* **Events** (``scenario_for``): the stage allocates one IOAS, maps 64 KiB into it, binds every
  device and adds it to KVM (the guest's devices, present before it starts); the explored events
  are the attach of every device to the IOAS and, in the ``+unplug`` variant, the hot-unplug of
  every device behind a unit without Snoop Control that has a group of its own, each after its own
  attach.  The ``+unplug`` variant exists only for systems that have such a device (otherwise it
  is the plain one).  A device sharing its group is not unplugged alone: on the VFIO group path
  (6.2-6.5) the runner's ``hot_unplug`` deletes the group's KVM file with the first member to go,
  while QEMU keeps it until the group's last device (vfio_put_group), so the answer would be the
  runner's artifact, not the kernel's.
* **Policies**: a profile (kernel era or proposal) with a user-space strategy, named
  ``profile`` (kernel-auto) or ``profile+strategy``.  A strategy the profile cannot run
  (qemu-style needs IOMMU_HWPT_ALLOC, 6.6+) is reported as skipped.
* **Verdicts** per policy over all systems: *order-independent* (every order ends with the same
  placement: which devices share a HWPT and whether it enforces CC), *hazard-free* (no order
  passes any SPEC.md section 7 hazard), *domain-minimal* (every order ends with the minimal
  domain count, below).  For each failure the smallest system where it happens and a trace.

Minimal domain count (``min_domains``), docs/sweep.md: the fewest HWPTs that can hold the
devices still attached at the end with no hazard.  Every device that is attached at the end
fits in one HWPT: a non-CC HWPT takes every device while a device without CC capability is
present (KVM then counts the VM non-coherent, so no hazard), and a CC HWPT takes every device
once none is (all are CC-capable).  A group never needs more than one HWPT.  So the minimum is
1 when any device is attached at the end and 0 when none is (every device unplugged).  It is a
property of the system alone, not of the policies compared; the sweep also records the fewest
hazard-free domains any compared policy reached (``best_seen``) and checks it never beats the
bound.
"""
from __future__ import annotations

import math
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass
from functools import cache

from .errors import ScenarioError
from .hazards import KINDS
from .scenario import Scenario, parse

LINUX_PROFILES = ("linux-6.2", "linux-6.6", "linux-6.12")
PROPOSALS = ("proposal-want-cc", "proposal-upgrade-keep")
DEFAULT_POLICIES = LINUX_PROFILES + PROPOSALS + ("linux-6.12+qemu-style", "linux-6.12+cc-aware")
FAILURES = ("order-dependent",) + KINDS + ("not-domain-minimal",)


# -- systems ---------------------------------------------------------------------------------
@dataclass(frozen=True, order=True)
class UnitShape:
    """One remapping unit: Snoop Control, and the sizes of the iommu groups behind it (descending)."""
    sc: bool
    groups: tuple[int, ...]

    @property
    def devices(self) -> int:
        return sum(self.groups)

    def label(self) -> str:
        return ("sc" if self.sc else "nosc") + "[" + ",".join(map(str, self.groups)) + "]"


@dataclass(frozen=True, order=True)
class SystemShape:
    """A system up to renaming of units and devices: the sorted tuple of its units; ``unplug``
    says whether the devices without CC capability are hot-unplugged after their attach."""
    units: tuple[UnitShape, ...]
    unplug: bool = False

    @property
    def devices(self) -> int:
        return sum(u.devices for u in self.units)

    @property
    def unpluggable(self) -> int:
        """Devices the +unplug variant hot-unplugs: those without CC capability that sit alone in their group."""
        return sum(1 for u in self.units if not u.sc for g in u.groups if g == 1)

    @property
    def events(self) -> int:
        return self.devices + (self.unpluggable if self.unplug else 0)

    def label(self) -> str:
        return " ".join(u.label() for u in self.units) + (" +unplug" if self.unplug else "")

    def size_key(self) -> tuple:
        """What 'smallest' means: fewest devices, then units, then events, then groups; then the label."""
        return (self.devices, len(self.units), self.events, sum(len(u.groups) for u in self.units), self.label())

    def labelled(self) -> int:
        """How many labelled systems (devices and units named) this shape stands for: n! k! / |Aut|."""
        aut = 1
        for u, m in Counter(self.units).items():
            per = 1
            for s, c in Counter(u.groups).items():
                per *= math.factorial(s) ** c * math.factorial(c)
            aut *= math.factorial(m) * per ** m
        return math.factorial(self.devices) * math.factorial(len(self.units)) // aut

    def pooled(self) -> SystemShape:
        """The same groups with one unit per Snoop Control kind: the system every shape of its class
        (``read_off_units``) is the same scenario as, but for which unit each group sits behind."""
        units = tuple(UnitShape(sc, tuple(sorted((g for u in self.units if u.sc == sc for g in u.groups),
                                                 reverse=True)))
                      for sc in (False, True) if any(u.sc == sc for u in self.units))
        return SystemShape(units, self.unplug)

    def min_domains(self) -> int:
        """The minimal domain count (module docstring): 1 if any device is attached at the end, else 0."""
        left = self.devices - (self.unpluggable if self.unplug else 0)
        return 1 if left else 0

    def to_json(self) -> dict:
        return {"label": self.label(), "devices": self.devices, "units": [
            {"snoop_control": u.sc, "groups": list(u.groups)} for u in self.units], "unplug": self.unplug,
            "events": self.events, "labelled": self.labelled(), "min_domains": self.min_domains()}

    @staticmethod
    def from_label(text: str) -> SystemShape:
        """Inverse of ``label``: ``"sc[1,1] nosc[2] +unplug"``; ValueError if malformed."""
        parts = text.split()
        unplug = bool(parts) and parts[-1] == "+unplug"
        if unplug:
            parts = parts[:-1]
        units = []
        for p in parts:
            kind, _, rest = p.partition("[")
            if kind not in ("sc", "nosc") or not rest.endswith("]"):
                raise ValueError(f"system {text!r}: unit {p!r} is not like sc[1,1] or nosc[2]")
            try:
                groups = tuple(sorted((int(x) for x in rest[:-1].split(",")), reverse=True))
            except ValueError:
                raise ValueError(f"system {text!r}: group sizes in {p!r} must be integers") from None
            if not groups or min(groups) < 1:
                raise ValueError(f"system {text!r}: unit {p!r} needs group sizes of at least 1")
            units.append(UnitShape(kind == "sc", groups))
        if not units:
            raise ValueError(f"system {text!r}: no units")
        return SystemShape(tuple(sorted(units)), unplug)


def _partitions(n: int, largest: int | None = None):
    """Integer partitions of n, parts descending."""
    largest = n if largest is None else largest
    if n == 0:
        yield ()
        return
    for first in range(min(n, largest), 0, -1):
        for rest in _partitions(n - first, first):
            yield (first,) + rest


@cache
def _unit_shapes(max_devices: int, sc_kinds: tuple[bool, ...], groups: str) -> tuple[UnitShape, ...]:
    out = []
    for n in range(1, max_devices + 1):
        parts = list(_partitions(n)) if groups == "all" else [(1,) * n]
        for sc in sc_kinds:
            out.extend(UnitShape(sc, p) for p in parts)
    return tuple(sorted(out))


def _check_bounds(max_devices: int, max_units: int, min_devices: int) -> None:
    if max_devices < 1 or max_units < 1:
        raise ValueError("--max-devices and --max-units must be at least 1")
    if not 1 <= min_devices <= max_devices:
        raise ValueError(f"--min-devices must be between 1 and --max-devices ({max_devices})")


def systems_of_size(n: int, max_units: int, *, sc: str = "both", groups: str = "all",
                    unplug: str = "both") -> list[SystemShape]:
    """Every system shape with exactly ``n`` devices over 1..max_units units, each once, in size order
    (options as ``enumerate_systems``).  Sweeps are counted size by size (sweep_size.py), so a bound far
    beyond reach is refused after the first few sizes instead of enumerated."""
    kinds = {"both": (False, True), "on": (True,), "off": (False,)}[sc]
    shapes = _unit_shapes(n, kinds, "own" if groups == "own" else "all")
    variants = {"none": (False,), "only": (True,), "both": (False, True)}[unplug]
    out: list[SystemShape] = []

    def rec(start: int, units: tuple[UnitShape, ...], devices: int) -> None:
        if devices == n:
            for up in variants:
                s = SystemShape(units, up)
                if not up or s.unpluggable:
                    out.append(s)
            return
        if len(units) == max_units:
            return
        for i in range(start, len(shapes)):
            u = shapes[i]
            if devices + u.devices <= n:
                rec(i, units + (u,), devices + u.devices)   # multisets: non-decreasing unit order

    rec(0, (), 0)
    return sorted(out, key=SystemShape.size_key)


def enumerate_systems(max_devices: int, max_units: int, *, min_devices: int = 1, sc: str = "both",
                      groups: str = "all", unplug: str = "both") -> list[SystemShape]:
    """Every system shape with min_devices..max_devices devices over 1..max_units units, each once.

    ``sc``: "both" (units with and without Snoop Control), "on", "off".  ``groups``: "all" (every
    partition of a unit's devices into groups), "own" (every device its own group).  ``unplug``:
    "none", "only" (the +unplug variant) or "both"; the +unplug variant exists only for systems
    with a device behind a unit without Snoop Control."""
    _check_bounds(max_devices, max_units, min_devices)
    return [s for n in range(min_devices, max_devices + 1)
            for s in systems_of_size(n, max_units, sc=sc, groups=groups, unplug=unplug)]


def scenario_for(shape: SystemShape) -> Scenario:
    """The scenario a sweep explores for one system shape (module docstring), built with scenario.parse."""
    units, devices, steps, events = [], [], [{"op": "ioas_alloc", "as": "ioas"},
                                              {"op": "map", "ioas": "ioas", "iova": 0x100000, "length": 0x10000}], []
    counts = {True: 0, False: 0}
    for ui, u in enumerate(shape.units):
        units.append({"name": f"dmar{ui}", "snoop_control": u.sc})
    # groups in one order whatever unit they sit behind (without SC first, then by size): the shapes of
    # one class (``read_off_units``) get the same devices, groups and events, only the units differ
    groups = sorted(((u.sc, size, ui) for ui, u in enumerate(shape.units) for size in u.groups),
                    key=lambda t: (t[0], -t[1]))
    for g, (sc, size, ui) in enumerate(groups):
        for _ in range(size):
            name = f"{'nic' if sc else 'gpu'}{counts[sc]}"    # nic: CC-capable, gpu: not
            counts[sc] += 1
            devices.append({"name": name, "unit": f"dmar{ui}", "group": f"g{g}"})
    for d in devices:
        steps += [{"op": "bind", "device": d["name"]}, {"op": "kvm_add", "device": d["name"]}]
    for d in devices:
        events.append({"op": "attach", "device": d["name"], "pt": "ioas"})
    if shape.unplug:
        size = Counter(d["group"] for d in devices)
        for d in devices:
            if d["name"].startswith("gpu") and size[d["group"]] == 1:
                events.append({"op": "hot_unplug", "device": d["name"], "after": f"attach:{d['name']}"})
    doc = {"name": shape.label(), "description": f"sweep system {shape.label()}", "profile": "linux-6.12",
           "system": {"iommu": "intel", "kvm": True, "units": units}, "devices": devices, "steps": steps,
           "explore": {"events": events}}
    return parse(doc, f"<sweep {shape.label()}>")


# -- policies --------------------------------------------------------------------------------
def parse_policies(policies: str | None = None, profiles: str | None = None,
                   strategies: str | None = None) -> list[tuple[str, str]]:
    """``--policies A,B+S`` or the product ``--profiles`` x ``--strategies``; (profile, strategy) pairs.
    ValueError naming the unknown profile or strategy."""
    from .profiles import PROFILES
    from .userspace import STRATEGIES
    if policies and (profiles or strategies):
        raise ValueError("--policies names profile+strategy pairs itself; give it or --profiles/--strategies")
    if policies:
        names = [p.strip() for p in policies.split(",") if p.strip()]
    elif profiles or strategies:
        ps = [p.strip() for p in (profiles or ",".join(LINUX_PROFILES + PROPOSALS)).split(",") if p.strip()]
        ss = [s.strip() for s in (strategies or "kernel-auto").split(",") if s.strip()]
        names = [p if s == "kernel-auto" else f"{p}+{s}" for p in ps for s in ss]
    else:
        names = list(DEFAULT_POLICIES)
    if not names:
        raise ValueError("no policy given")
    out = []
    for n in names:
        p, _, s = n.partition("+")
        s = s or "kernel-auto"
        if p not in PROFILES:
            raise ValueError(f"unknown profile {p!r} in policy {n!r}; known: {', '.join(PROFILES)}")
        if s not in STRATEGIES:
            raise ValueError(f"unknown strategy {s!r} in policy {n!r}; known: {', '.join(STRATEGIES)}")
        if (p, s) not in out:
            out.append((p, s))
    return out


def policy_name(profile: str, strategy: str) -> str:
    return profile if strategy == "kernel-auto" else f"{profile}+{strategy}"


# -- one system under every policy (the unit of work every engine runs) ------------------------
def _compact(r: dict, cpu: float) -> dict:
    out = {k: r[k] for k in ("orders", "states", "seconds", "domain_counts", "order_dependent",
                             "optimal_domains", "worst_domains", "hazard_free_orders", "truncated")}
    out["cpu_seconds"] = cpu
    out["hazards"] = [{"kind": h["kind"], "count": h["count"], "trace": h["trace"]} for h in r["hazards"]]
    out["outcome_traces"] = r.get("outcome_traces", [])
    out["domain_traces"] = r.get("domain_traces", {})
    if "derived" in r:
        out["derived"] = r["derived"]
    return out


def explore_system(shape: SystemShape, policies: list[tuple[str, str]], max_states: int | None = None,
                   symmetry: bool = True, plain_too: bool = False) -> dict:
    """Explore one system under each policy; a compact, picklable result (no model state).
    ``plain_too`` (a ``+unplug`` shape): the same system without hot-unplugs is read off the same
    explorations (``explore.explore_prefix``) and returned as ``also`` (explored on its own where it
    cannot be read off: a truncated exploration)."""
    from .explore import explore, explore_prefix
    sc = scenario_for(shape)
    plain = SystemShape(shape.units) if plain_too and shape.unplug else None
    psc = scenario_for(plain) if plain is not None else None
    out, pout = {}, {}
    for prof, strat in policies:
        name = policy_name(prof, strat)
        cpu = time.process_time()
        try:
            if psc is None:
                r = explore(sc, prof, strat, symmetry=symmetry, max_states=max_states)
            else:
                r, pr = explore_prefix(sc, psc, prof, strat, symmetry=symmetry, max_states=max_states)
        except ScenarioError as e:
            out[name] = {"skipped": str(e)}
            if psc is not None:
                pout[name] = {"skipped": str(e)}
            continue
        out[name] = _compact(r, time.process_time() - cpu)
        if psc is not None:
            if pr is None:
                cpu = time.process_time()
                pr = explore(psc, prof, strat, symmetry=symmetry, max_states=max_states)
                pout[name] = _compact(pr, time.process_time() - cpu)
            else:
                pout[name] = _compact(pr, 0.0)
    res = {"system": shape.label(), "results": out}
    if plain is not None:
        res["also"] = {"system": plain.label(), "results": pout}
    return res


def read_off_twins(shapes) -> set[str]:
    """The systems without hot-unplugs among ``shapes`` whose ``+unplug`` twin is among them too: a sweep
    reads them off the twin's explorations (``explore_system(..., plain_too=True)``), none of their own."""
    labels = {s.label() for s in shapes}
    return {s.label() for s in shapes if not s.unplug and SystemShape(s.units, True).label() in labels}


def read_off_units(shapes, prefer=()) -> dict[str, str]:
    """System -> the system among ``shapes`` whose results it takes, for the systems that differ from it only
    in which units their groups sit behind (one ``pooled`` shape, module docstring): each class is explored
    once, on its member with the fewest units (one in ``prefer`` first: results already at hand).  The
    representatives of a plain system and its +unplug twin are twins again (chosen by the units alone)."""
    rep: dict[str, str] = {}
    out = {}
    for s in sorted(shapes, key=lambda s: (s.label() not in prefer, len(s.units), SystemShape(s.units).label())):
        r = rep.setdefault(s.pooled().label(), s.label())
        if r != s.label():
            out[s.label()] = r
    return out


def explored_systems(shapes, prefer=()) -> list[SystemShape]:
    """The systems among ``shapes`` a sweep explores: the others are read off a system of their class
    (``read_off_units``) or, without hot-unplugs, off their +unplug twin (``read_off_twins``)."""
    units = read_off_units(shapes, prefer)
    reps = [s for s in shapes if s.label() not in units]
    twins = read_off_twins(reps)
    return [s for s in reps if s.label() not in twins]


def at_hand(precomputed: dict) -> set[str]:
    """The systems whose results ``run_sweep``'s ``precomputed`` already holds (with a twin's ``also``)."""
    return set(precomputed) | {r["also"]["system"] for r in precomputed.values() if r.get("also")}


def read_off(results: dict, source: str) -> dict:
    """One system's per-policy results taken from ``source``'s (``read_off_units``): the same, marked ``derived``."""
    why = f"read off {source}: the same devices, groups and events, behind other units of the same capabilities"
    return {name: r if "skipped" in r else dict(r, derived=why, seconds=0.0, cpu_seconds=0.0)
            for name, r in results.items()}


def read_off_sentence(res: dict) -> str:
    """For the reports: how many of a sweep's explorations were read off other systems' (its JSON)."""
    n = res.get("derived_explorations", 0)
    total = res["bound"]["systems"] * len(res["policies"])
    return (f"; {n:,} of {total:,} explorations read off other systems' (a system of the same class, or the "
            f"+unplug twin)") if n else ""


def _task(args):   # ProcessPoolExecutor needs a module-level callable
    label, policies, max_states, symmetry, plain_too = args
    return explore_system(SystemShape.from_label(label), policies, max_states, symmetry, plain_too)


def cost_order(shapes: list[SystemShape]) -> list[SystemShape]:
    """Largest first (events, then devices), so the long explorations start early and the pool stays full."""
    return sorted(shapes, key=lambda s: (-s.events, -s.devices, s.size_key()))


class SweepInterrupted(Exception):
    """Ctrl-C during a sweep: what was done by then (a part of a sweep gives no verdict)."""

    def __init__(self, done: int, total: int, states: int, seconds: float):
        super().__init__(f"{done} of {total} systems explored")
        self.done, self.total, self.states, self.seconds = done, total, states, seconds


def _ignore_sigint() -> None:   # pool workers: Ctrl-C is the driver's to handle (no worker tracebacks)
    import signal
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class ProcessEngine:
    """Explorations on this machine: in this process (one job) or a pool of ``jobs`` processes.
    An engine runs ``fn(task)`` for every task, calls ``done(result)`` as each finishes, and returns
    what the sweep JSON reports about it; distributed.RayEngine is the other one."""
    name = "process"

    def __init__(self, jobs: int | None = None):
        self.jobs = jobs or os.cpu_count() or 1

    @property
    def workers(self) -> int:
        return self.jobs

    def run(self, fn, tasks: list, done) -> dict:
        if self.jobs == 1 or len(tasks) <= 1:
            for t in tasks:
                done(fn(t))
            return {"workers": self.jobs}
        import concurrent.futures as cf
        import multiprocessing as mp
        ctx = mp.get_context("forkserver" if sys.platform.startswith("linux") else "spawn")
        pool = cf.ProcessPoolExecutor(max_workers=self.jobs, mp_context=ctx, initializer=_ignore_sigint)
        try:
            futs = [pool.submit(fn, t) for t in tasks]
            for f in cf.as_completed(futs):
                done(f.result())
        except BaseException:
            _stop(pool)
            raise
        pool.shutdown()
        return {"workers": self.jobs}


def _stop(pool) -> None:
    """Stop a pool now: drop the queued tasks and end the running ones (Ctrl-C must not wait for them)."""
    procs = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for p in procs:
        p.terminate()
    for p in procs:
        p.join()
    pool.shutdown(wait=True)


def run_sweep(shapes: list[SystemShape], policies: list[tuple[str, str]], *, engine=None, jobs: int | None = None,
              max_states: int | None = None, symmetry: bool = True, progress=None,
              precomputed: dict | None = None, started: float | None = None) -> dict:
    """Explore every shape under every policy on ``engine`` (default: ``ProcessEngine(jobs)``); the aggregated
    sweep result.  ``precomputed``: label -> ``explore_system`` result already at hand (the size estimate's
    calibration; with its ``also``), not explored again; ``started``: its perf_counter start, so the sweep's time includes it.
    Ctrl-C raises SweepInterrupted saying what was done."""
    if engine is None:
        engine = ProcessEngine(jobs)
    elif jobs is not None:
        raise ValueError("jobs is the default engine's; give the engine its workers instead")
    t0 = time.perf_counter() if started is None else started
    precomputed = precomputed or {}
    # one system per class of systems that differ only in their units' names (read_off_units); of those,
    # a system without hot-unplugs is read off its +unplug twin's explorations when both are to be explored
    have = at_hand(precomputed)
    copy_of = read_off_units(shapes, have)
    members: dict[str, list[SystemShape]] = {}
    for s in shapes:
        if s.label() in copy_of:
            members.setdefault(copy_of[s.label()], []).append(s)
    todo = [s for s in shapes if s.label() not in have and s.label() not in copy_of]
    plain_read = read_off_twins(todo)
    tasks = [(s.label(), policies, max_states, symmetry, s.unplug and SystemShape(s.units).label() in plain_read)
             for s in cost_order(todo) if s.label() not in plain_read]
    per_system: dict[str, dict] = {}
    best: dict[str, dict] = {}
    states = [0]

    def record(label: str, results: dict) -> None:
        per_system[label] = reduce_system(SystemShape.from_label(label), results, best)
        states[0] += sum(x.get("states", 0) for x in results.values() if "derived" not in x)
        if progress:
            progress(len(per_system), len(shapes), label)

    def done(r):
        for one in (r, r.get("also")):
            if one is None:
                continue
            record(one["system"], one["results"])
            for m in members.get(one["system"], ()):
                record(m.label(), read_off(one["results"], one["system"]))

    for label in [s.label() for s in shapes if s.label() in precomputed and s.label() not in copy_of]:
        done(precomputed[label])
    try:
        info = {"engine": engine.name, **engine.run(_task, tasks, done)}
    except KeyboardInterrupt:
        raise SweepInterrupted(len(per_system), len(shapes), states[0], time.perf_counter() - t0) from None
    seconds = time.perf_counter() - t0
    return aggregate(shapes, policies, per_system, best, seconds, info)


# -- aggregation and verdicts ------------------------------------------------------------------
def _failures(shape: SystemShape, r: dict) -> dict[str, list]:
    """Failure kind -> a trace (list of event dicts, or two traces for order dependence)."""
    out: dict[str, list] = {}
    if r["order_dependent"]:
        out["order-dependent"] = r.get("outcome_traces", [])[:2]
    for h in r["hazards"]:
        out[h["kind"]] = h["trace"]
    bound = shape.min_domains()
    worse = sorted(int(k) for k in r["domain_counts"] if int(k) > bound)
    if worse:
        out["not-domain-minimal"] = r.get("domain_traces", {}).get(str(worse[-1]), [])
    return out


def reduce_system(shape: SystemShape, results: dict, best: dict) -> dict:
    """Fold one system's results into the running sweep as they arrive, in any order: keep the compact
    per-policy result with its failure kinds, and a failure's trace only while this system is the
    smallest seen with it (``best[policy][failure]``).  The driver so holds a few hundred bytes per
    exploration, not every trace."""
    out = {}
    for name, r in results.items():
        if "skipped" in r:
            out[name] = r
            continue
        fails = _failures(shape, r)
        out[name] = dict(_slim(r), failures=list(fails), seconds=r.get("seconds", 0),
                         cpu_seconds=r.get("cpu_seconds", 0))
        if "derived" in r:
            out[name]["derived"] = r["derived"]
        mine = best.setdefault(name, {})
        for f, trace in fails.items():
            if f not in mine or shape.size_key() < mine[f]["size"]:
                mine[f] = {"size": shape.size_key(), "system": shape.label(), "trace": trace, "devices": shape.devices,
                           "domain_counts": r["domain_counts"], "min_domains": shape.min_domains()}
    return out


def aggregate(shapes: list[SystemShape], policies: list[tuple[str, str]], per_system: dict, best: dict,
              seconds: float, info: dict | None = None) -> dict:
    """The sweep JSON from the reduced per-system results and the smallest failures (``reduce_system``);
    the same whatever engine produced them, in whatever order."""
    shapes = sorted(shapes, key=SystemShape.size_key)
    names = [policy_name(p, s) for p, s in policies]
    # states explored: a system read off another's explorations (``derived``) explored none of its own
    total_states = sum(r.get("states", 0) for res in per_system.values() for r in res.values() if "derived" not in r)
    derived = sum(1 for res in per_system.values() for r in res.values() if "derived" in r)
    total_explore_s = sum(r.get("seconds", 0) for res in per_system.values() for r in res.values())
    total_cpu_s = sum(r.get("cpu_seconds", 0) for res in per_system.values() for r in res.values())
    out_pol = {}
    best_seen_violations = []
    for name in names:
        n = w = 0
        counts = {f: 0 for f in FAILURES}
        weighted = {f: 0 for f in FAILURES}
        smallest = {f: {k: v for k, v in c.items() if k != "size"} for f, c in best.get(name, {}).items()}
        skipped = []
        truncated = 0
        for s in shapes:
            r = per_system[s.label()][name]
            if "skipped" in r:
                skipped.append(s.label())
                continue
            n += 1
            w += s.labelled()
            truncated += bool(r["truncated"])
            for f in r["failures"]:
                counts[f] += 1
                weighted[f] += s.labelled()
        ok = {
            "order_independent": counts["order-dependent"] == 0,
            "hazard_free": all(counts[k] == 0 for k in KINDS),
            "domain_minimal": counts["not-domain-minimal"] == 0,
        }
        first_fail = min((smallest[f] for f in smallest), key=lambda x: SystemShape.from_label(x["system"]).size_key(),
                         default=None)
        out_pol[name] = {
            "profile": name.partition("+")[0], "strategy": name.partition("+")[2] or "kernel-auto",
            "systems": n, "labelled_systems": w, "skipped": len(skipped), "truncated": truncated,
            "counts": counts,
            "share": {f: round(counts[f] / n, 4) if n else None for f in FAILURES},
            "share_labelled": {f: round(weighted[f] / w, 4) if w else None for f in FAILURES},
            "verdict": {**ok, "all": all(ok.values()) and n > 0 and not truncated,
                        "smallest_failure": None if first_fail is None else first_fail["system"]},
            "counterexamples": {f: smallest[f] for f in FAILURES if f in smallest},
        }
    for s in shapes:   # the bound is a lower bound: no policy may do better without a hazard
        for name in names:
            r = per_system[s.label()][name]
            if "skipped" not in r and r["optimal_domains"] is not None and r["optimal_domains"] < s.min_domains():
                best_seen_violations.append({"system": s.label(), "policy": name, "optimal": r["optimal_domains"]})
    max_dev = max((s.devices for s in shapes), default=0)
    max_units = max((len(s.units) for s in shapes), default=0)
    return {
        "bound": {"max_devices": max_dev, "max_units": max_units, "systems": len(shapes),
                  "labelled_systems": sum(s.labelled() for s in shapes),
                  "with_unplug": sum(1 for s in shapes if s.unplug)},
        "policies": out_pol,
        "verdicts": {name: verdict_sentence(name, out_pol[name], max_dev, max_units, scope(shapes)) for name in names},
        "systems": [dict(s.to_json(), results={k: {x: y for x, y in v.items() if x not in _NOT_SHOWN}
                                               for k, v in per_system[s.label()].items()},
                         best_seen=min((v["optimal_domains"] for v in per_system[s.label()].values()
                                        if v.get("optimal_domains") is not None), default=None))
                    for s in shapes],
        "min_domains_violations": best_seen_violations,
        "states": total_states, "seconds": round(seconds, 3), "explore_seconds": round(total_explore_s, 3),
        "states_per_second": round(total_states / seconds, 1) if seconds else 0.0,
        "ms_per_state": round(1000 * total_explore_s / total_states, 4) if total_states else None,
        "cpu_seconds": round(total_cpu_s, 3),
        "cpu_ms_per_state": round(1000 * total_cpu_s / total_states, 4) if total_states else None,
        "engine": info or {},
        "derived_explorations": derived,
        "counting": "shares count system shapes, each once (unplug variants are separate systems); "
                    "share_labelled weighs each shape by the labelled systems it stands for",
    }


_NOT_SHOWN = ("failures", "seconds", "cpu_seconds")


def _slim(r: dict) -> dict:
    if "skipped" in r:
        return r
    return {"orders": r["orders"], "states": r["states"], "domain_counts": r["domain_counts"],
            "order_dependent": r["order_dependent"], "optimal_domains": r["optimal_domains"],
            "hazards": {h["kind"]: h["count"] for h in r["hazards"]}, "truncated": r["truncated"]}


def scope(shapes: list[SystemShape]) -> str:
    """What the swept systems have in common beyond the bound, for the verdict: ' with one group per device' ..."""
    out = []
    if shapes and all(g == 1 for s in shapes for u in s.units for g in u.groups) and max(s.devices for s in shapes) > 1:
        out.append("with one group per device")
    if shapes and all(u.sc for s in shapes for u in s.units):
        out.append("with Snoop Control on every unit")
    elif shapes and not any(u.sc for s in shapes for u in s.units):
        out.append("with no unit with Snoop Control")
    if shapes and not any(s.unplug for s in shapes):
        out.append("without hot-unplug")
    elif shapes and all(s.unplug for s in shapes):
        out.append("all with hot-unplug")
    return "".join(" " + x if i == 0 else ", " + x for i, x in enumerate(out))


def verdict_sentence(name: str, p: dict, max_dev: int, max_units: int, where: str = "") -> str:
    bound = (f"up to {max_dev} device{'s' if max_dev != 1 else ''} and {max_units} unit{'s' if max_units != 1 else ''}"
             + where)
    if not p["systems"]:
        return f"policy {name} was not run on any system {bound} (skipped: it needs a newer kernel)"
    if p["verdict"]["all"]:
        return (f"policy {name} is order-independent, hazard-free and domain-minimal for all "
                f"{p['systems']} systems {bound}")
    if p["truncated"] and not p["counterexamples"]:
        return f"policy {name}: {p['truncated']} explorations were truncated (raise --max-states); no verdict"
    fails = [f for f in FAILURES if f in p["counterexamples"]]
    sm = p["verdict"]["smallest_failure"]
    here = [f for f in fails if p["counterexamples"][f]["system"] == sm]
    return (f"policy {name} is not: the smallest system where it fails is {sm} ({', '.join(here)}); "
            f"over all {p['systems']} systems {bound}: " +
            ", ".join(f"{f} in {p['counts'][f]}" for f in fails))
