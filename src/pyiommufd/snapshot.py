"""Snapshots of a live object graph (the runner's ``Vmm`` with its emulated host), restored in place.

The explorer visits thousands of states of one machine.  Thawing a pickled copy per successor
builds every object anew (~1.5 us an object on the project's machine, ~70 objects at 8 devices).
A ``Snapshot`` instead records, for every mutable object reachable from the root, its contents
one level deep: an instance's slot values (or its ``__dict__``), a list's items, a dict's items, a
set's members.  ``restore`` writes those contents back *into the same objects*, so identities and
aliasing are kept by construction and no object is created.  The explorer keeps one live machine:
restore a state, run one event on the kernel model, read the key, snapshot the child if new.

Objects a later event creates (a new HWPT, a domain) become part of the snapshots that reach them;
an object not reachable from the restored root is garbage to the model whatever it holds.
``shared`` objects (the scenario, profile, system description, strategy, the process's scratch
memory: what ``Vmm._shared_parts`` names) are never recorded: no op changes them.

Lineage: a snapshot derived from another shares its ``seen`` set (and the objects it names, held so that
no id is reused): walking a new state stops at anything recorded in any state of the lineage.  That is
the parent's set plus objects made in sibling branches, which cannot be reached from a state restored
from the parent (restoring rewrites every reference the parent recorded; a new object is reachable only
through a reference an event wrote after that).

Restoring is a handful of C-level loops (``map`` over ``setattr``, ``dict.update`` ...), about a
fifth of a pickle load of the same state.
"""
from __future__ import annotations

import types
from collections import deque
from itertools import compress, repeat
from operator import attrgetter, is_not, ne, not_

_ATOMIC = frozenset({int, float, bool, str, bytes, type(None), type, complex, range, types.FunctionType,
                     types.BuiltinFunctionType, types.MethodType, frozenset})
_UNSET = object()
_plans: dict[type, tuple] = {}


def _getter(names: list):
    """All of ``names``' values of an object, as a tuple (None for no names)."""
    if len(names) > 1:
        return attrgetter(*names)
    if names:
        one = attrgetter(names[0])
        return lambda o: (one(o),)
    return None


def fixed_slots(t: type) -> frozenset:
    """The slots ``t`` declares ``_fixed`` (over its MRO): set once when the object is made and never
    rebound, so a snapshot walks their values (what they hold may change) but does not record them."""
    return frozenset(n for k in t.__mro__ for n in k.__dict__.get("_fixed", ()))


def _plan(t: type) -> tuple:
    """(getter of all slot values, slot names over the MRO, getter of the recorded ones, their names, has
    __dict__, frozen) for instances of ``t``.  Recorded: every slot but the ``fixed_slots``.  Frozen: a frozen
    dataclass (a unit, a device's description), whose attributes are never rebound, or an object without any
    state (empty ``__slots__`` all the way up); it is walked through like a tuple and not recorded."""
    p = _plans.get(t)
    if p is None:
        slots = []
        for k in t.__mro__:
            s = k.__dict__.get("__slots__", ())
            for n in ((s,) if isinstance(s, str) else s):
                if n not in ("__dict__", "__weakref__") and n not in slots:
                    slots.append(n)
        fixed = fixed_slots(t)
        rec = [n for n in slots if n not in fixed]
        params = t.__dict__.get("__dataclass_params__")
        has_dict = t.__dictoffset__ != 0
        # no slots, no __dict__, no C-level state either (``__slots__ = ()`` all the way up): holds nothing
        stateless = not slots and not has_dict and t.__basicsize__ == object.__basicsize__
        p = _plans[t] = (_getter(slots), tuple(slots), _getter(rec), tuple(rec), has_dict,
                         bool(params and params.frozen) or stateless)
    return p


class Snapshot:
    """The contents of every mutable object reachable from ``root`` (module docstring).

    ``parent``: the snapshot this state was restored from before its last event, if the caller knows
    it.  Then only what changed is walked: every recorded slot is read again (C loops) and compared by
    identity with the parent's, every recorded container likewise; new objects can only be reached
    through a changed value, so the walk starts there and stops at anything the parent recorded.
    Objects the event dropped stay recorded (restoring them is harmless: nothing reachable sees them)."""

    __slots__ = ("root", "seen", "objs", "names", "vals", "unset", "dicts", "dict_items", "lists", "list_items",
                 "sets", "set_items", "bytearrays", "bytearray_data", "changed", "held")

    def __init__(self, root, shared_ids: frozenset | set, parent: "Snapshot | None" = None):
        self.root = root
        self.changed = None    # derived: what differs from the parent (``undo``), until the caller drops it
        if parent is not None and parent.root is root and self._derive(parent, shared_ids):
            return
        self.objs, self.names, self.vals, self.unset = [], [], [], []
        self.dicts, self.dict_items, self.lists, self.list_items = [], [], [], []
        self.sets, self.set_items, self.bytearrays, self.bytearray_data = [], [], [], []
        # ids of everything recorded (and of the shared parts), with the objects themselves held so no id
        # is reused; shared with every snapshot derived from this one (module docstring, "Lineage")
        self.seen, self.held = set(shared_ids), []
        self._walk([root], self.seen)

    def _derive(self, p: "Snapshot", shared_ids) -> bool:
        """Record this state as ``p`` plus what changed (class docstring); False to walk it all instead."""
        if p.unset and any(hasattr(o, n) for o, n in p.unset):
            return False
        try:
            vals = list(map(getattr, p.objs, p.names))
        except AttributeError:     # a slot was deleted
            return False
        slots = list(compress(range(len(vals)), map(is_not, vals, p.vals)))
        fresh = [vals[i] for i in slots]
        # containers: each compared with the parent's copy (C loops); a changed one is copied anew and its
        # items walked, an unchanged one shares the parent's copy (copies are never mutated)
        dict_items, list_items, set_items = list(p.dict_items), list(p.list_items), list(p.set_items)
        self.changed = changed = (slots, [], [], [])
        for live, copies, new, idx in ((p.dicts, p.dict_items, dict_items, changed[1]),
                                       (p.lists, p.list_items, list_items, changed[2]),
                                       (p.sets, p.set_items, set_items, changed[3])):
            for i in compress(range(len(live)), map(ne, live, copies)):
                idx.append(i)
                c = new[i] = live[i].copy()
                fresh.extend(c)
                if type(c) is dict:
                    fresh.extend(c.values())
        self.objs, self.names, self.vals, self.unset = p.objs, p.names, vals, p.unset
        self.dicts, self.dict_items, self.lists, self.list_items = p.dicts, dict_items, p.lists, list_items
        self.sets, self.set_items = p.sets, set_items
        self.bytearrays, self.bytearray_data = p.bytearrays, list(map(bytes, p.bytearrays))
        seen = self.seen = p.seen
        self.held = p.held
        fresh = list(compress(fresh, map(not_, map(_ATOMIC.__contains__, map(type, fresh)))))
        fresh = list(compress(fresh, map(not_, map(seen.__contains__, map(id, fresh)))))
        # a new tuple of plain values (a reserved range, a PTE) holds nothing to record: not worth a walk
        fresh = [o for o in fresh if type(o) is not tuple or not all(map(_ATOMIC.__contains__, map(type, o)))]
        if fresh:   # new objects: walk them, appending to copies
            self.objs, self.names, self.unset = list(p.objs), list(p.names), list(p.unset)
            self.dicts, self.lists, self.sets, self.bytearrays = \
                list(p.dicts), list(p.lists), list(p.sets), list(self.bytearrays)
            self._walk(fresh, seen)
        return True

    def _walk(self, stack: list, seen: set) -> None:
        """Record every object reachable from ``stack`` and not in ``seen`` (ids)."""
        objs, names, vals, unset = self.objs, self.names, self.vals, self.unset
        dicts, dict_items, lists, list_items = self.dicts, self.dict_items, self.lists, self.list_items
        sets, set_items, bas, ba_data = self.sets, self.set_items, self.bytearrays, self.bytearray_data
        seen_add, hold = seen.add, self.held.append
        push, extend, pop = stack.append, stack.extend, stack.pop
        atomic, plans = _ATOMIC, _plans
        while stack:
            o = pop()
            t = type(o)
            if t in atomic:
                continue
            i = id(o)
            if i in seen:
                continue
            seen_add(i)
            hold(o)
            if t is tuple:
                extend(o)
            elif t is dict:
                dicts.append(o)
                dict_items.append(o.copy())
                extend(o)
                extend(o.values())
            elif t is list:
                lists.append(o)
                list_items.append(o.copy())
                extend(o)
            elif t is set:
                sets.append(o)
                set_items.append(o.copy())
                extend(o)
            elif t is bytearray:
                bas.append(o)
                ba_data.append(bytes(o))
            else:
                getter, slots, rec_getter, rec, has_dict, frozen = plans.get(t) or _plan(t)
                if frozen:
                    if slots:
                        extend(getter(o))
                    if has_dict:
                        extend(o.__dict__.values())
                    continue
                if slots:
                    try:
                        values = getter(o)
                    except AttributeError:   # a slot never set: record which, to unset it again
                        values = []
                        for n in slots:
                            v = getattr(o, n, _UNSET)
                            if v is _UNSET:
                                unset.append((o, n))
                            else:
                                if n in rec:
                                    objs.append(o)
                                    names.append(n)
                                    vals.append(v)
                                values.append(v)
                    else:
                        if rec:
                            objs.extend(repeat(o, len(rec)))
                            names.extend(rec)
                            vals.extend(values if len(rec) == len(slots) else rec_getter(o))
                    extend(values)
                if has_dict:
                    push(o.__dict__)
                elif not slots:
                    raise TypeError(f"snapshot: cannot record a {t.__name__} (no slots, no __dict__)")

    def undo(self, changed: tuple):
        """``restore`` when the live objects are exactly a snapshot derived from this one, whose ``changed``
        is given: only what the derivation found different is written back (objects created since are
        no longer reachable).  Returns the root."""
        slots, dicts, lists, sets = changed
        objs, names, vals = self.objs, self.names, self.vals
        for i in slots:
            setattr(objs[i], names[i], vals[i])
        for i in dicts:
            d = self.dicts[i]
            d.clear()
            d.update(self.dict_items[i])
        for i in lists:
            self.lists[i][:] = self.list_items[i]
        for i in sets:
            t = self.sets[i]
            t.clear()
            t.update(self.set_items[i])
        deque(map(bytearray.__setitem__, self.bytearrays, repeat(slice(None)), self.bytearray_data), 0)
        return self.root

    def restore(self):
        """Put every recorded object back as it was; returns the root."""
        deque(map(setattr, self.objs, self.names, self.vals), 0)
        for o, n in self.unset:
            if hasattr(o, n):
                delattr(o, n)
        deque(map(dict.clear, self.dicts), 0)
        deque(map(dict.update, self.dicts, self.dict_items), 0)
        # list.__init__ / set.__init__ on a live one: cleared, then filled (one C call; cheaper than a slice
        # assignment, or clear + update)
        deque(map(list.__init__, self.lists, self.list_items), 0)
        deque(map(set.__init__, self.sets, self.set_items), 0)
        deque(map(bytearray.__setitem__, self.bytearrays, repeat(slice(None)), self.bytearray_data), 0)
        return self.root
