"""The explorer: every order of a scenario's ``[explore] events``, over the one model.

The scenario's ``steps`` set the stage; then each event happens exactly once, in every
order its ``after`` constraints allow.  Breadth-first over states (one level per event
done), each state the runner's ``Vmm`` (the emulated host plus the VMM's own files and
names), de-duplicated on a canonical key:

* ids are renamed away: an IOAS is its rank, a HWPT its (IOAS, position in the IOAS's
  hwpt_list) -- the position matters, the auto-domain search walks that list in order;
* with symmetry reduction, interchangeable devices (same unit capabilities, same kind of
  group, same events up to their name) are named by their class, so states that differ by
  a permutation of such devices are one state (Stateright's "rewrite to a representative").

Counting orders: ways[T] = sum of ways[S] over the edges S->T, level by level; with
symmetry each edge from a representative stands for one event in every state of its orbit,
so the sums count concrete orders.  The same recurrence per hazard kind counts the orders
that pass a state with that hazard; the first state found with a kind (BFS) gives the
shortest counterexample trace.
"""
from __future__ import annotations

import gc
import time
from dataclasses import dataclass
from operator import attrgetter

from .errors import ScenarioError
from .hazards import KINDS, detect
from .runner import Vmm
from .scenario import Scenario, Step
from .snapshot import Snapshot


@dataclass
class Node:
    vmm: Vmm | None              # the representative: the state reached by ``trace``
    done: frozenset
    trace: tuple                 # event indices; the lexicographically least shortest path here
    hazards: frozenset = frozenset()
    domains: int = 0
    ways: int = 0                # orders reaching this state
    seen: dict | None = None     # kind -> orders reaching this state that passed that hazard
    clean: int = 0               # orders reaching this state with no hazard on the way
    outcome: tuple | None = None  # terminal states: ``_outcome`` (read while the state is at hand)
    sig: dict | None = None      # live path with symmetry: ``device_signatures`` of the state, for ``orbits``


def _template(ev: Step, own: set[str]) -> tuple:
    args = tuple(sorted((k, v) for k, v in ev.args.items() if k != "device"))
    after = tuple(sorted(("self", a.split(":", 1)[0]) if a in own else ("label", a) for a in ev.after))
    return (ev.op, args, after)


def device_classes(sc: Scenario, symmetry: bool) -> dict[str, object]:
    """Device -> class; devices of one class are interchangeable everywhere in the model."""
    if not symmetry:
        return {d.name: d.name for d in sc.system.devices}
    units = {u.name: u for u in sc.system.units}
    events_of = {d.name: [e for e in sc.events if e.args.get("device") == d.name] for d in sc.system.devices}
    label_dev = {e.label: e.args.get("device") for e in sc.events}
    referenced = {label_dev[a] for e in sc.events for a in e.after if label_dev.get(a) != e.args.get("device")}
    # a name bound to a device (bind/hotplug ``as``) and used by an event pins that device
    dev_of_name = {s.args["as"]: s.args.get("device") for s in sc.steps + sc.events
                   if s.op in ("bind", "hotplug") and "as" in s.args}
    used_names = {v for e in sc.events for v in e.args.values() if isinstance(v, str)}
    referenced |= {dev_of_name[n] for n in used_names if n in dev_of_name}
    group_size = {}
    for d in sc.system.devices:
        group_size[d.group] = group_size.get(d.group, 0) + 1
    out = {}
    for d in sc.system.devices:
        u = units[d.unit]
        own = {e.label for e in events_of[d.name]}
        if d.name in referenced:
            out[d.name] = ("unique", d.name)   # named by something else: keep it apart
            continue
        grp = ("own",) if group_size[d.group] == 1 else ("shared", d.group)
        out[d.name] = ((u.snoop_control, u.nesting, u.dirty_tracking), d.canwbs, grp,
                       tuple(_template(e, own) for e in events_of[d.name]))
    return out


def _done_parts(done: frozenset, events: list[Step]) -> tuple[dict, tuple]:
    """What the key takes from the done-set: each device's done ops (sorted), the device-less events."""
    by_dev: dict[str, list] = {}
    glob = []
    for i in sorted(done):
        d = events[i].args.get("device")
        if d is None:
            glob.append(i)
        else:
            by_dev.setdefault(d, []).append(events[i].op)
    return {d: tuple(sorted(ops)) for d, ops in by_dev.items()}, tuple(glob)


_obj_id = attrgetter("id")


class KeyPlan:
    """What the key takes from the scenario and the class map, worked out once per exploration: the devices
    in one fixed order (the host's), their groups and classes, whether the classes are all distinct, and per
    done-set each device's done ops in that order plus the device-less events."""

    __slots__ = ("names", "groups", "class_map", "classes", "index", "distinct", "events", "done", "no_kvm", "kvm",
                 "by_name")

    def __init__(self, devices: dict, events: list[Step], classes: dict):
        self.names = tuple(devices)
        self.groups = tuple(d.group for d in devices.values())
        self.class_map = classes
        self.classes = tuple(classes[n] for n in self.names)
        self.index = {n: i for i, n in enumerate(self.names)}
        # all distinct (symmetry off): sorting the devices' parts would order them by class, the same
        # permutation of this order in every state, so the parts are kept in this order unsorted
        self.distinct = len(set(self.classes)) == len(self.classes)
        self.events = events
        self.done: dict = {}
        self.no_kvm = tuple(False for _ in self.names)
        self.kvm: tuple = (None, self.no_kvm)   # (KVM's file list, its ``kvm_column``) last seen
        self.by_name = all(c == n for n, c in classes.items())   # symmetry off: a device's class is its name

    def done_parts(self, done: frozenset) -> tuple[tuple, tuple]:
        """(each device's done ops, in ``names`` order; the device-less events), kept per done-set."""
        p = self.done.get(done)
        if p is None:
            by_dev, glob = _done_parts(done, self.events)
            p = self.done[done] = (tuple([by_dev.get(n, ()) for n in self.names]), glob)
        return p

    def kvm_column(self, files: list) -> tuple:
        """Whether KVM's kvm-vfio device holds each device's file or its group's, in ``names`` order.
        Kept for the last file list seen: a file's device or group is never rebound (vfio.py ``_fixed``),
        so the same file objects give the same column (held here, so their ids are not reused)."""
        last = self.kvm
        if last[0] != files:    # by identity (files have no __eq__), item by item
            kvm_files = {(f.dev.name if f.kind == "cdev" else f.group) for f in files}
            col = tuple([n in kvm_files or g in kvm_files for n, g in zip(self.names, self.groups)])
            last = self.kvm = (list(files), col)
        return last[1]

    def reserved_part(self, reserved: list) -> tuple:
        """An IOAS's reserved ranges with their owners' classes, sorted."""
        if self.by_name:
            return tuple(sorted(reserved))
        classes = self.class_map
        return tuple(sorted([(a, b, classes[o]) for a, b, o in reserved]))


def _signatures(vmm: Vmm, ioases: list, hws: list, label: dict, rows: tuple, plan: KeyPlan,
                devices: tuple | None = None) -> dict:
    """``device_signatures`` (of ``devices``, default all) from the parts ``canonical`` has already computed
    (``parts_out``)."""
    extra: dict[str, list] = {}
    for o in hws:
        for n in o.domain.upgraded_over:
            extra.setdefault(n, []).append(("upgraded", label[o.id]))
    for o in ioases:
        for a, b, owner in o.iopt.reserved:
            extra.setdefault(owner, []).append(("reserved", label[o.id], a, b))
    us = vmm.us.get("hwpts", ())
    no_extra = ()
    index = plan.index
    return {n: (rows[index[n]], tuple(sorted(extra[n])) if n in extra else no_extra,
                tuple(i for i, h in enumerate(us) if n in h["devices"]) if us else no_extra)
            for n in (plan.names if devices is None else devices)}


def device_signatures(vmm: Vmm, done: frozenset, events: list[Step], classes: dict,
                      plan: KeyPlan | None = None) -> dict[str, tuple]:
    """Device -> everything the key says about it, position by position: its part with its HWPT's label,
    the HWPTs whose domain lists it as upgraded over, the reserved ranges it owns, the user-space HWPTs
    (strategy bookkeeping) listing it.  (The key itself sees the last three only as multisets of
    classes.)  Two devices of one class with equal signatures can be swapped leaving the key without
    symmetry unchanged, part by part: the state's own symmetry (``Model.orbits``)."""
    parts: list = []
    canonical(vmm, done, events, classes, plan, parts)
    return _signatures(vmm, *parts)


def canonical(vmm: Vmm, done: frozenset, events: list[Step], classes: dict, plan: KeyPlan | None = None,
              parts_out: list | None = None) -> tuple:
    """The state's key (module docstring), in one pass over the state.  ``plan``: the ``KeyPlan`` the
    caller keeps per exploration (made here if None).  ``parts_out``: filled with what ``_signatures``
    needs, so the caller can take the signatures of this state without walking it again."""
    host = vmm.host
    if plan is None:
        plan = KeyPlan(host.devices, events, classes)
    done_col, glob = plan.done_parts(done)
    ctx = host.ctxs[vmm.iommufd.fd]
    ioases, hws, nested = [], [], None
    for o in ctx.objects.values():
        t = o.type
        if t == "device":
            continue
        if t == "ioas":
            ioases.append(o)
        elif t == "hwpt_paging":
            hws.append(o)
        elif t == "hwpt_nested":
            hws.append(o)
            nested = [o] if nested is None else nested + [o]
    if len(ioases) > 1:
        ioases.sort(key=_obj_id)
    # every IOAS/HWPT id -> its id-free label (module docstring)
    label = {}
    for n, o in enumerate(ioases):
        label[o.id] = ("ioas", n)
        for pos, h in enumerate(o.hwpt_list):
            label[h.id] = ("hwpt", n, pos)
    if nested:   # rare: ranked among the nested HWPTs of one parent, by id
        nested.sort(key=_obj_id)
        for r, o in enumerate(nested):
            p = o.parent
            label[o.id] = ("nested", label[p.id], sum(1 for j in nested[:r] if j.parent is p))
    where = [None] * len(plan.names)   # each device's HWPT (its label), in ``plan.names`` order
    index = plan.index
    for g in ctx.groups.values():
        h = g.hwpt
        if h is not None:
            lab = label[h.id]
            for idev in g.devices:
                where[index[idev.dev.name]] = lab
    # each device's part, in ``plan.names`` order: its class, bound, attached, how opened, whether the
    # VMM holds its cdev / a device fd, whether KVM holds its file (or its group's), its done ops, the
    # label of its HWPT.  A HWPT's member devices are thus not in the HWPT's part: they are the devices
    # whose part ends with its label.
    k = host.kvm
    in_kvm = plan.no_kvm if k is None else plan.kvm_column(k.files)
    names = plan.names
    cdevs, devfds = vmm.cdevs, vmm.devfds
    rows = tuple([(c, d.idev_id is not None, d.attached, d.open_via, n in cdevs, n in devfds, kv, ops, w)
                  for c, n, d, kv, ops, w in zip(plan.classes, names, map(host.devices.__getitem__, names), in_kvm,
                                                 done_col, where)])
    if parts_out is not None:
        parts_out[:] = (ioases, hws, label, rows, plan)
    hwpts = []
    for o in hws:
        dom = o.domain
        up = dom.upgraded_over
        ptes = dom.ptes
        hwpts.append((label[o.id], o.users, getattr(o, "auto_domain", False), o.enforce_cc, dom.enforce_cc,
                      dom.set_pte_snp, dom.has_mappings,
                      tuple(sorted(ptes.items())) if len(ptes) > 1 else tuple(ptes.items()),
                      up and tuple(sorted([classes[n] for n in up]))))
    if len(hwpts) > 1:
        hwpts.sort()
    ioas_state = tuple([(o.iopt.areas.key_items(), plan.reserved_part(o.iopt.reserved)) for o in ioases])
    kinds = vmm.kinds
    names = tuple(sorted([(k, ("dev", v) if v not in label or kinds.get(k) == "device" else label[v])
                          for k, v in vmm.names.items()]))
    us = vmm.us.get("hwpts")
    if us:
        index, lget = plan.index, label.get
        us = tuple((lget(h["id"]), h["cc"], tuple(sorted([rows[index[n]][:-1] for n in h["devices"]])))
                   for h in us)
    else:
        us = ()
    k = host.kvm
    kvm = (k.noncoherent, k.noncoherent_dma_count, k.sptes_present, k.memtype_stale) if k else None
    return (rows if plan.distinct else tuple(sorted(rows)), tuple(hwpts), ioas_state, names, us, kvm, glob)


def _domains(vmm: Vmm) -> int:
    ctx = vmm.host.ctxs[vmm.iommufd.fd]
    return sum(1 for o in ctx.objects.values() if o.type == "hwpt_paging")


def _outcome(vmm: Vmm) -> tuple:
    """What 'the same result' means for order dependence: which devices share a HWPT and
    whether it enforces CC (ids and list positions aside)."""
    ctx = vmm.host.ctxs[vmm.iommufd.fd]
    parts = []
    for g_hwpt in {id(g.hwpt): g.hwpt for g in ctx.groups.values() if g.hwpt is not None}.values():
        members = sorted(d.dev.name for g in ctx.groups.values() if g.hwpt is g_hwpt for d in g.devices)
        parts.append((g_hwpt.enforce_cc, tuple(members)))
    return tuple(sorted(parts)), _domains(vmm)


class Model:
    """A scenario as a transition system (Stateright's shape): ``init``, the enabled
    ``actions`` (events), ``next`` state, the canonical ``key``, and the facts the
    properties read.  Every engine (in-process BFS, the Ray one) drives this one model."""

    def __init__(self, sc: Scenario, profile: str | None = None, strategy: str = "kernel-auto",
                 symmetry: bool = True, live: bool = False):
        """``live``: one machine, states kept as ``Snapshot``s and restored in place before each event
        (the in-process explorer); otherwise every state is its own ``Vmm`` (engines that hold several
        successors at once, or ship them: distributed.py, the naive search)."""
        if not sc.events:
            raise ScenarioError(f"{sc.source}: [explore] has no events: nothing to permute")
        self.sc, self.profile, self.strategy, self.symmetry = sc, profile or sc.profile, strategy, symmetry
        self.events = sc.events
        self.classes = device_classes(sc, symmetry)
        # what the key holds of a class: with symmetry, a small int per class (the same partition of the
        # devices; a class is a deep tuple, slow to sort and hash in every key), numbered in a fixed order
        # so keys are the same in every process (distributed.py digests them)
        ids = {c: i for i, c in enumerate(sorted(set(self.classes.values()), key=repr))}
        self.key_classes = {n: ids[c] for n, c in self.classes.items()} if symmetry else self.classes
        self._parts: list = []
        self._plan: KeyPlan | None = None
        self._keep_parts = symmetry and live   # what ``signatures`` reads back
        self.outcome_at: frozenset | None = None   # a done-set whose states also get an outcome (``explore_prefix``)
        self.live = live
        own = {}
        for e in self.events:
            if e.args.get("device") is not None:
                own.setdefault(e.args["device"], set()).add(e.label)
        self._templates = [_template(e, own.get(e.args.get("device"), set())) for e in self.events]
        tids: dict = {}   # each event's template as a small int (``orbits`` hashes it per enabled event)
        self._template_ids = [tids.setdefault(t, len(tids)) for t in self._templates]

    def init(self) -> Vmm:
        vmm = Vmm(self.sc, self.profile, self.strategy)
        for step in self.sc.steps:
            vmm.apply(step)
        if self.live:
            self._shared_ids = frozenset(id(o) for o in vmm._shared_parts())
            self._at = None    # the snapshot the live machine was last restored from
            self._clean = None   # that snapshot while the machine still is exactly it
            self._undo = None    # (that snapshot, what differs) while the machine is exactly the last kept
        return vmm

    def orbits(self, node: Node) -> list[tuple[int, list[int]]]:
        """The enabled events of ``node`` as (representative, [events]) groups: with symmetry, events of
        one template on devices whose signatures are equal (``device_signatures``) lead to children with
        one key, the symmetry reduction's own assumption (a permutation of a class maps states and events
        to states and events with the same keys), so the live path runs one and counts it for all.
        Otherwise every event alone."""
        acts = self.actions(node.done)
        if not (self.symmetry and self.live) or len(acts) < 2:
            return [(ei, [ei]) for ei in acts]
        sig = node.sig
        if sig is None:
            if self._clean is not node.vmm:
                self._undo = None
                node.vmm.restore()
                self._clean = node.vmm    # restored and only read: the first ``next`` needs no restore
            vmm = node.vmm.root
            sig = self._signature_ids(device_signatures(vmm, node.done, self.events, self.key_classes,
                                                        self._plan_of(vmm)), node.done)
        groups: dict = {}
        out = []
        events, tids = self.events, self._template_ids
        for ei in acts:
            s = sig.get(events[ei].args.get("device"))
            if s is None:   # no device, or no other device of its class with an event enabled here
                out.append((ei, [ei]))
                continue
            k = (s, tids[ei])
            g = groups.get(k)
            if g is None:
                g = groups[k] = (ei, [ei])
                out.append(g)
            else:
                g[1].append(ei)
        return out

    def _signature_devices(self, done: frozenset) -> tuple:
        """The devices whose signatures ``orbits`` compares after ``done``, by class: those with an event
        enabled that share their class with another such device (a device alone in its class here is its
        own orbit: its signature, which holds its class, equals no other's).  Kept per done-set."""
        cache = self.__dict__.setdefault("_sig_devices", {})
        devs = cache.get(done)
        if devs is None:
            by_class: dict = {}
            for ei in self.actions(done):
                d = self.events[ei].args.get("device")
                if d is not None and self.classes[d] != d:
                    by_class.setdefault(self.key_classes[d], set()).add(d)
            devs = cache[done] = tuple(tuple(sorted(ds)) for _, ds in sorted(by_class.items()) if len(ds) > 1)
        return devs

    def _signature_ids(self, sigs: dict, done: frozenset) -> dict:
        """Device -> its signature as a small int, equal iff the signatures are, for the devices
        ``_signature_devices`` names (what ``orbits`` hashes, per enabled event).  Compared, not hashed:
        equal signatures mostly share their parts (labels, done ops), which ``==`` passes by identity, and
        unequal ones differ early; a hash walks every part of every signature."""
        ids: dict = {}
        n = 0
        for devs in self._signature_devices(done):
            reps: list = []
            for d in devs:
                s = sigs[d]
                for r, i in reps:
                    if r == s:
                        ids[d] = i
                        break
                else:
                    ids[d] = n
                    reps.append((s, n))
                    n += 1
        return ids

    def keep(self, vmm: Vmm, done: frozenset | None = None):
        """What a node holds of the state ``vmm``: the Vmm itself, or (live) a Snapshot of it; nothing for a
        final state (``done`` is every event) on the live path: it is never expanded."""
        if not self.live:
            return vmm
        if done is not None and len(done) == len(self.events):
            return None
        s = Snapshot(vmm, self._shared_ids, self._at)
        # derived from the state just restored: the next ``next`` from that state undoes only the difference
        self._undo = (self._at, s.changed) if s.changed is not None else None
        s.changed = None
        return s

    def actions(self, done: frozenset) -> list[int]:
        """The events enabled after ``done`` (each once, after what its ``after`` names); cached per done-set."""
        cache = self.__dict__.setdefault("_actions", {})
        acts = cache.get(done)
        if acts is None:
            done_labels = {self.events[i].label for i in done}
            acts = cache[done] = [i for i, e in enumerate(self.events)
                                  if i not in done and all(a in done_labels for a in e.after)]
        return acts

    def next(self, vmm, ei: int) -> Vmm:
        """The successor of ``vmm`` by event ``ei``.  Live: ``vmm`` is a Snapshot, restored into the one
        machine, which then runs the event and is returned (valid until the next ``next``).  Otherwise
        ``vmm`` is not changed: the successors of one state are asked for one after another, so it is
        serialized once (``Vmm.freeze``) and each successor thawed from that (``_frozen``, a one-entry
        cache)."""
        if self.live:
            undo, self._undo = self._undo, None
            self._at = vmm
            if self._clean is vmm:
                child = vmm.root
            elif undo is not None and undo[0] is vmm:
                child = vmm.undo(undo[1])
            else:
                child = vmm.restore()
            self._clean = None
            child.apply(self.events[ei])
            return child
        frozen = getattr(self, "_frozen", None)
        if frozen is None or frozen[0] is not vmm:
            frozen = self._frozen = (vmm, vmm.freeze())
        child = frozen[1].thaw()
        child.apply(self.events[ei])
        return child

    def __getstate__(self):   # engines ship the model to workers: not the cache
        return {k: v for k, v in self.__dict__.items()
                if k not in ("_frozen", "_plan", "_actions", "_sig_devices", "_at", "_clean", "_undo", "_parts")}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._parts = []
        self._plan = None

    def _plan_of(self, vmm: Vmm) -> KeyPlan:
        """The exploration's ``KeyPlan`` (made from the first state asked for: every state has the same devices)."""
        plan = self._plan
        if plan is None:
            plan = self._plan = KeyPlan(vmm.host.devices, self.events, self.key_classes)
        return plan

    def key(self, vmm: Vmm, done: frozenset) -> tuple:
        """The canonical key; with symmetry on the live path it also keeps what the signatures of this
        state need (``node``)."""
        plan = self._plan_of(vmm)
        if not self._keep_parts:
            return canonical(vmm, done, self.events, self.key_classes, plan)
        parts = self._parts
        k = canonical(vmm, done, self.events, self.key_classes, plan, parts)
        parts.append((vmm, done))
        return k

    def node(self, vmm: Vmm, done: frozenset, trace: tuple) -> Node:
        """A new state's node; with symmetry on the live path, its signatures are taken now from the key
        just computed for it (``key`` left its parts), not by walking the state again when it is expanded."""
        return Node(self.keep(vmm, done), done, trace, frozenset(h.kind for h in detect(vmm.host)), _domains(vmm),
                    0, {k: 0 for k in KINDS}, 0,
                    _outcome(vmm) if len(done) == len(self.events) or done == self.outcome_at else None,
                    self.signatures(vmm, done))

    def signatures(self, vmm: Vmm, done: frozenset) -> dict | None:
        """What ``orbits`` will need of this state (live path, symmetry, two events or more left), taken
        from the parts of the key ``key`` just computed for it when it was this state's."""
        sig = None
        if self.symmetry and self.live and len(done) < len(self.events) - 1:
            devs = self._signature_devices(done)
            if not devs:
                sig = {}
            else:
                p = self._parts
                if len(p) == 6 and p[5][0] is vmm and p[5][1] is done:
                    sigs = _signatures(vmm, *p[:5], [d for ds in devs for d in ds])
                else:
                    sigs = device_signatures(vmm, done, self.events, self.key_classes, self._plan_of(vmm))
                sig = self._signature_ids(sigs, done)
        self._parts.clear()
        return sig


def expand_level(model: Model, level: dict, nodes_get, nodes_add, max_states=None, edges=None) -> bool:
    """Expand one BFS level in place.  ``level`` maps key -> Node (fully counted).  Children go
    through ``nodes_get(key)`` / ``nodes_add(key, node)``; a child keeps the least trace among its
    incoming edges, with the state that trace reaches.  Returns True if max_states cut anything."""
    truncated = False
    for key, node in sorted(level.items(), key=lambda kv: kv[1].trace):
        for ei, same in model.orbits(node):
            child = model.next(node.vmm, ei)
            done = node.done | {ei}
            ckey = model.key(child, done)
            trace = node.trace + (ei,)
            cn = nodes_get(ckey)
            if cn is None:
                if not nodes_add(ckey, None):
                    truncated = True
                    continue
                cn = model.node(child, done, trace)
                nodes_add(ckey, cn)
            elif trace < cn.trace:   # a new representative: its devices' signatures are its own
                cn.vmm, cn.trace, cn.sig = model.keep(child, done), trace, model.signatures(child, done)
            if edges is not None:
                edges.extend((key, ckey, e) for e in same)
            accumulate(cn, node, len(same))
    return truncated


def accumulate(cn: Node, parent: Node, edges: int = 1) -> None:
    """Order counting along ``edges`` edges parent -> cn."""
    cn.ways += parent.ways * edges
    cn.clean += 0 if cn.hazards else parent.clean * edges
    for k in KINDS:
        cn.seen[k] += (parent.ways if k in cn.hazards else parent.seen[k]) * edges


def summarize(model: Model, nodes: dict, terminals: list, truncated: bool, seconds: float) -> dict:
    """The explore JSON from the finished node table (shared by every engine)."""
    facts = summary_facts(model, nodes.values(), [nodes[k] for k in terminals])
    return summary_from_facts(model, facts, truncated, seconds)


def _least(a, b):
    """The lesser of two (len, trace) keys; None is 'none yet'."""
    return b if a is None or (b is not None and b < a) else a


def summary_facts(model: Model, nodes, terminal_nodes) -> dict:
    """What ``summarize`` reads from a node table, in a form that merges (``merge_facts``): an engine
    whose nodes live in several shards (distributed.py) takes each shard's facts and merges them."""
    f = {"states": 0, "outcomes": {}, "domains": {}, "clean_domains": set(), "hazard_free_orders": 0,
         "first": {}, "count": {k: 0 for k in KINDS}, "hstates": {k: 0 for k in KINDS}}
    for n in terminal_nodes:
        o = n.outcome
        t = (len(n.trace), n.trace)
        for table, key in ((f["outcomes"], o), (f["domains"], n.domains)):
            ways, least = table.get(key, (0, None))
            table[key] = (ways + n.ways, _least(least, t))
        if n.clean:
            f["clean_domains"].add(n.domains)
        f["hazard_free_orders"] += n.clean
        for k in KINDS:
            f["count"][k] += n.seen[k]
    for n in nodes:
        f["states"] += 1
        for k in n.hazards:
            f["hstates"][k] += 1
            f["first"][k] = _least(f["first"].get(k), (len(n.trace), n.trace))
    return f


def merge_facts(a: dict, b: dict) -> dict:
    """Facts of two disjoint node sets -> facts of their union."""
    out = {"states": a["states"] + b["states"], "clean_domains": a["clean_domains"] | b["clean_domains"],
           "hazard_free_orders": a["hazard_free_orders"] + b["hazard_free_orders"],
           "count": {k: a["count"][k] + b["count"][k] for k in KINDS},
           "hstates": {k: a["hstates"][k] + b["hstates"][k] for k in KINDS},
           "first": {k: _least(a["first"].get(k), b["first"].get(k)) for k in set(a["first"]) | set(b["first"])}}
    for t in ("outcomes", "domains"):
        out[t] = dict(a[t])
        for key, (ways, least) in b[t].items():
            w0, l0 = out[t].get(key, (0, None))
            out[t][key] = (w0 + ways, _least(l0, least))
    return out


def summary_from_facts(model: Model, f: dict, truncated: bool, seconds: float) -> dict:
    """The explore JSON from (merged) facts.  Besides the DESIGN.md keys: ``domain_traces`` (final
    domain count -> the least order ending with it) and ``outcome_traces`` (the distinct final
    placements, by least order, up to 4: what differs when ``order_dependent``)."""
    ev = model.events
    domain_counts = {str(d): w for d, (w, _) in sorted(f["domains"].items())}
    orders = sum(w for w, _ in f["domains"].values())
    hazards = [{"kind": k, "count": f["count"][k], "trace": [ev[i].to_json() for i in f["first"][k][1]],
                "states": f["hstates"][k]} for k in KINDS if k in f["first"]]
    outcomes = sorted(f["outcomes"].items(), key=lambda kv: kv[1][1])
    return {"profile": model.profile, "strategy": model.strategy, "events": len(ev), "orders": orders,
            "states": f["states"], "seconds": round(seconds, 4),
            "states_per_second": round(f["states"] / seconds, 1) if seconds else 0.0,
            "domain_counts": domain_counts,
            "order_dependent": len(f["outcomes"]) > 1,
            "optimal_domains": min(f["clean_domains"]) if f["clean_domains"] else None,
            "worst_domains": max((int(k) for k in domain_counts), default=None),
            "hazard_free_orders": f["hazard_free_orders"],
            "hazards": hazards, "truncated": truncated, "symmetry": model.symmetry,
            "domain_traces": {str(d): [ev[i].to_json() for i in least[1]] for d, (_, least) in sorted(f["domains"].items())},
            "outcome_traces": [{"domains": o[1], "hwpts": [{"enforce_cc": cc, "devices": list(devs)} for cc, devs in o[0]],
                                "orders": w, "trace": [ev[i].to_json() for i in least[1]]} for o, (w, least) in outcomes[:4]]}


def root_node(model: Model) -> tuple[tuple, Node]:
    """The initial state (the stage played) as a counted node, with its key: one order reaches it."""
    base = model.init()
    root = model.node(base, frozenset(), ())
    root.ways, root.clean = 1, 0 if root.hazards else 1
    root.seen = {k: int(k in root.hazards) for k in KINDS}
    return model.key(base, frozenset()), root


def explore(sc: Scenario, profile: str | None = None, strategy: str = "kernel-auto", *, symmetry: bool = True,
            max_states: int | None = None, progress=None, graph_limit: int = 0, live: bool = True,
            nodes_out: dict | None = None, outcome_at: frozenset | None = None) -> dict:
    """Explore every order of ``sc.events`` in this process; the DESIGN.md explore JSON.
    With ``graph_limit`` > 0 and at most that many states, the state graph is included.
    ``live=False``: a copy of the machine per state (``Vmm.freeze``/``thaw``), the reference the
    live path is tested against.  ``nodes_out``: filled with every state's key -> its Node (tests).
    ``outcome_at``: a done-set whose states get an outcome too, as final states do (``explore_prefix``)."""
    gc_was = gc.isenabled()
    if live:   # the live path makes few objects; the collector would only rescan the growing node table
        gc.disable()
    try:
        return _explore(sc, profile, strategy, symmetry, max_states, progress, graph_limit, live, nodes_out,
                        outcome_at)
    finally:
        if gc_was:
            gc.enable()


def _explore(sc, profile, strategy, symmetry, max_states, progress, graph_limit, live, nodes_out,
             outcome_at=None) -> dict:
    t0 = time.perf_counter()
    model = Model(sc, profile, strategy, symmetry, live)
    model.outcome_at = outcome_at
    root_key, root = root_node(model)
    nodes: dict[tuple, Node] = {root_key: root}
    level = {root_key: root}
    truncated = False
    edges: list | None = [] if graph_limit else None

    def add(key, node):
        if node is None:   # asking for room
            return max_states is None or len(nodes) < max_states
        nodes[key] = node
        nxt[key] = node
        return True

    for depth in range(len(model.events)):
        nxt: dict = {}
        truncated |= expand_level(model, level, nodes.get, add, max_states, edges)
        for n in level.values():
            n.vmm = None       # free memory level by level
        level = nxt
        if progress:
            progress(depth + 1, len(model.events), len(nodes))
        if not level:
            break
    terminals = [k for k, n in nodes.items() if len(n.done) == len(model.events)]
    if nodes_out is not None:
        nodes_out.update(nodes)
    res = summarize(model, nodes, terminals, truncated, time.perf_counter() - t0)
    if graph_limit and len(nodes) <= graph_limit:
        ids = {k: i for i, k in enumerate(nodes)}
        res["graph"] = {
            "nodes": [{"id": ids[k], "depth": len(n.done), "hazards": sorted(n.hazards), "domains": n.domains,
                       "ways": n.ways} for k, n in nodes.items()],
            "edges": [[ids[a], ids[b], model.events[ei].label] for a, b, ei in edges]}
    return res


def _partition(classes: dict) -> set:
    """A device -> class map as the partition of the devices it makes (class names aside)."""
    by: dict = {}
    for d, c in classes.items():
        by.setdefault(c, set()).add(d)
    return {frozenset(v) for v in by.values()}


def explore_prefix(sc: Scenario, sub: Scenario, profile: str | None = None, strategy: str = "kernel-auto", *,
                   symmetry: bool = True, max_states: int | None = None) -> tuple[dict, dict | None]:
    """Explore ``sc``; also give ``sub``'s explore result, read off the same states, when ``sub`` is ``sc``
    with its later events left out (a sweep system without its hot-unplugs, sweep.py): None when it is not.

    Why that is ``sub``'s exploration: a state whose done-set holds only ``sub``'s events (the first k) is
    reached only through such states and events, so those states, their edges, least traces and the
    order counts along them (a state's counts sum over its incoming edges) are ``sub``'s own -- provided
    the stage and those events are the same, the key merges the same states (symmetry classes partition
    the devices alike in both), and the exploration was not cut short.  ``sub``'s final states are those
    whose done-set is exactly the first k events: they get an outcome (``outcome_at``).  The derived result
    has no time of its own (``seconds`` 0) and says ``derived``.  tests/test_explore_prefix.py checks it
    against exploring ``sub`` on every sweep system up to 4 devices."""
    k = len(sub.events)
    same = (sub.steps == sc.steps and sub.system == sc.system and sub.profile == sc.profile and
            0 < k < len(sc.events) and
            all((a.op, a.args, a.after, a.label) == (b.op, b.args, b.after, b.label)
                for a, b in zip(sub.events, sc.events)) and
            _partition(device_classes(sub, symmetry)) == _partition(device_classes(sc, symmetry)))
    prefix = frozenset(range(k)) if same else None
    nodes: dict = {}
    r = explore(sc, profile, strategy, symmetry=symmetry, max_states=max_states, nodes_out=nodes, outcome_at=prefix)
    if not same or r["truncated"]:
        return r, None
    sub_model = Model(sub, profile, strategy, symmetry)
    sub_nodes = [n for n in nodes.values() if n.done <= prefix]
    facts = summary_facts(sub_model, sub_nodes, [n for n in sub_nodes if n.done == prefix])
    out = summary_from_facts(sub_model, facts, False, 0.0)
    out["derived"] = f"from the exploration of {sc.name}: its states with none of the later events done"
    return r, out


def replay(sc: Scenario, profile: str, trace: list[dict], strategy: str = "kernel-auto") -> Vmm:
    """Run the stage and then ``trace`` (event dicts as in a hazard trace) as plain steps."""
    vmm = Vmm(sc, profile, strategy)
    for step in sc.steps:
        vmm.apply(step)
    for i, ev in enumerate(trace):
        args = {k: v for k, v in ev.items() if k != "op"}
        vmm.apply(Step(len(sc.steps) + i, ev["op"], args))
    return vmm


def compare(sc: Scenario, profiles: list[str], strategies: list[str] | None = None, **kw) -> dict:
    """Explore under each profile (and strategy); ``{"profiles": {NAME: explore result}}``.
    NAME is the profile, or ``profile+strategy`` when several strategies are compared."""
    strategies = strategies or ["kernel-auto"]
    out = {}
    for p in profiles:
        for s in strategies:
            name = p if len(strategies) == 1 else f"{p}+{s}"
            try:
                out[name] = explore(sc, p, s, **kw)
            except ScenarioError as e:
                if len(strategies) == 1:
                    raise
                out[name] = {"profile": p, "strategy": s, "skipped": str(e)}
    optimum = min((r["optimal_domains"] for r in out.values() if r.get("optimal_domains") is not None), default=None)
    for r in out.values():
        if "skipped" not in r:
            r["worst_order_optimal"] = optimum is not None and r["worst_domains"] == optimum and bool(
                r["hazard_free_orders"] == r["orders"])
    return {"profiles": out, "optimal_domains": optimum}


def stderr_progress(console):
    """A progress callback that prints one line per level to stderr."""
    def cb(depth, total, states):
        console.print(f"[dim]explore: {depth}/{total} events placed, {states} states[/]")
    return cb
