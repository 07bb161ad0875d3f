"""Scenario files (TOML): loading and validation.

Validation rejects only what cannot be put into an ioctl at all (unknown keys or ops,
wrong types, negative numbers, values wider than their field, names never bound);
anything the kernel can be asked -- an unaligned IOVA, a zero length, a surprising
order -- is left for the kernel to answer.  Every error names the file, the step (or
section) and the offending key or value.
"""
from __future__ import annotations

import datetime
import difflib
import errno as _errno
import os
import re
import stat
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from . import uapi
from .errors import ScenarioError
from .hazards import KINDS
from .profiles import PROFILES
from .system import IOMMU_KINDS, INTEL_PAGE_TABLES, DeviceDesc, System, Unit

U32, U64 = (1 << 32) - 1, (1 << 64) - 1

# op -> {key: (type, required)}; types: "device", "ref" (name bound by `as`, or u32 id),
# "name" (a new binding), "u64", "bool", "flags".
_DEV = ("device", True)
OPS: dict[str, dict[str, tuple[str, bool]]] = {
    "ioas_alloc": {"as": ("name", False)},
    "map": {"ioas": ("ref", True), "iova": ("u64", True), "length": ("u64", True),
            "readable": ("bool", False), "writeable": ("bool", False)},
    "unmap": {"ioas": ("ref", True), "iova": ("u64", True), "length": ("u64", True)},
    "hwpt_alloc": {"device": _DEV, "pt": ("ref", True), "flags": ("flags", False), "want_cc": ("bool", False),
                   "as": ("name", False)},
    "bind": {"device": _DEV, "as": ("name", False)},
    "unbind": {"device": _DEV},
    "attach": {"device": _DEV, "pt": ("ref", True), "as": ("name", False)},
    "replace": {"device": _DEV, "pt": ("ref", True), "as": ("name", False)},
    "detach": {"device": _DEV},
    "destroy": {"id": ("ref", True)},
    "kvm_add": {"device": _DEV},
    "kvm_del": {"device": _DEV},
    "hotplug": {"device": _DEV, "as": ("name", False)},
    "hot_unplug": {"device": _DEV},
    "dma": {"device": _DEV, "iova": ("u64", True), "length": ("u64", True), "snoop": ("bool", False)},
    "hw_info": {"device": _DEV},
}
COMMON_KEYS = {"op", "expect", "expect_by_profile", "note"}
EXPECT_KEYS = {"ok": bool, "errno": str, "pt": object, "hazards": list, "domains": int}
TOP_KEYS = {"name", "description", "profile", "profiles", "system", "devices", "steps", "explore"}


@dataclass
class Step:
    index: int
    op: str
    args: dict
    expect: dict | None = None
    expect_by_profile: dict = field(default_factory=dict)
    after: tuple[str, ...] = ()
    label: str = ""

    def expect_for(self, profile: str) -> dict | None:
        """The profile's own expect table replaces the default one."""
        return self.expect_by_profile.get(profile, self.expect)

    def to_json(self) -> dict:
        return {"op": self.op, **self.args}


@dataclass
class Scenario:
    source: str
    name: str
    description: str
    profile: str
    profiles: tuple[str, ...]
    system: System
    steps: list[Step]
    events: list[Step]


class _Ctx:
    def __init__(self, source: str):
        self.source = source
        self.binders: dict[str, int] = {}   # name -> first step whose 'as' binds it (for "bound later" hints)
        self.current: int | None = None     # the step being checked (None: an event)

    def fail(self, where: str, msg: str) -> None:
        raise ScenarioError(f"{self.source}: {where}: {msg}")


def _type_name(v) -> str:
    return {bool: "boolean", int: "integer", str: "string", list: "array", dict: "table", float: "float",
            datetime.datetime: "date-time", datetime.date: "date", datetime.time: "time"}.get(type(v), type(v).__name__)


def _show(v, limit: int = 60) -> str:
    """A value as the message quotes it: TOML-like scalars, cut short; never raises (huge ints, long strings)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        if v.bit_length() > 128:  # decimal repr of a huge int raises ValueError past 4300 digits; hex never does
            h = f"{'-' if v < 0 else ''}{abs(v):#x}"
            return f"{h[:20]}... ({v.bit_length()} bits)"
        return str(v)
    if isinstance(v, (list, dict)):
        return ""
    s = v.isoformat() if isinstance(v, (datetime.date, datetime.time)) else repr(v)
    return s if len(s) <= limit else s[:limit - 4] + "...'"


def _got(v) -> str:
    """'integer 1', "string 'yes'", 'array' ... for a 'must be X, got Y' message."""
    shown = _show(v)
    return f"{_type_name(v)} {shown}" if shown else _type_name(v)


def _hex(v: int) -> str:
    h = f"{v:#x}"
    return h if len(h) <= 24 else f"{h[:20]}... ({v.bit_length()} bits)"


def _unknown(what: str, v, choices, listing: str = "expected one of", suggest: bool = True) -> str:
    """"unknown op 'atach' (did you mean 'attach'?; expected one of: ...)"."""
    choices = list(choices)
    hint = []
    if suggest and isinstance(v, str):
        close = difflib.get_close_matches(v, choices, n=1, cutoff=0.6)
        if close:
            hint.append(f"did you mean {close[0]!r}?")
    if listing:
        hint.append(f"{listing}: {', '.join(choices) or 'none declared'}")
    return f"unknown {what} {_show(v) or _type_name(v)}" + (f" ({'; '.join(hint)})" if hint else "")


_ERRNO_NAMES = sorted({n for n in dir(_errno) if n.startswith("E") and isinstance(getattr(_errno, n), int)}
                      | {"EOPNOTSUPP"})


MAX_SCENARIO_BYTES = 1 << 20   # 1 MiB: hundreds of times the largest shipped scenario (3 KB)

_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def _not_regular(source: str, mode: int) -> ScenarioError:
    if stat.S_ISDIR(mode):
        return ScenarioError(f"{source}: is a directory, not a scenario file")
    kind = next((name for test, name in _KINDS if test(mode)), "not a regular file")
    return ScenarioError(f"{source}: is {kind}, not a regular file: a scenario is read from a file")


def _too_large(source: str, size: int | None) -> ScenarioError:
    got = f"{size:,} bytes" if size is not None else f"more than {MAX_SCENARIO_BYTES:,} bytes"
    return ScenarioError(f"{source}: {got}; a scenario file is at most {MAX_SCENARIO_BYTES:,} bytes (1 MiB)")


def read_scenario_bytes(path: str | Path) -> bytes:
    """The bytes of a scenario file, refusing at once what is not a regular file (a FIFO or /dev/zero would
    block or never end) or is larger than MAX_SCENARIO_BYTES; ScenarioError naming the file."""
    source = str(path)
    try:
        st = os.stat(path)      # before opening: opening a device or a FIFO may block or have effects
        if not stat.S_ISREG(st.st_mode):
            raise _not_regular(source, st.st_mode)
        if st.st_size > MAX_SCENARIO_BYTES:
            raise _too_large(source, st.st_size)
        # O_NONBLOCK: a FIFO swapped in after the stat must not block the open (fstat below refuses it)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ScenarioError(f"{source}: no such file") from None
    except OSError as e:
        raise ScenarioError(f"{source}: cannot read: {e.strerror}") from None
    try:
        st = os.fstat(fd)        # what was really opened (the path may have changed since the stat)
        if not stat.S_ISREG(st.st_mode):
            raise _not_regular(source, st.st_mode)
        chunks, size = [], 0
        while size <= MAX_SCENARIO_BYTES:
            chunk = os.read(fd, MAX_SCENARIO_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > MAX_SCENARIO_BYTES:  # the file grew after the stat
            raise _too_large(source, None)
        return b"".join(chunks)
    except OSError as e:
        raise ScenarioError(f"{source}: cannot read: {e.strerror}") from None
    finally:
        os.close(fd)


def load(path: str | Path) -> Scenario:
    """Read and validate a scenario file; ScenarioError (one line, naming file and step) if bad."""
    p = Path(path)
    source = str(path)
    text = read_scenario_bytes(path)
    try:
        doc = text.decode("utf-8-sig")   # a leading BOM (some editors write one) is not an error
    except UnicodeDecodeError as e:
        line = text.count(b"\n", 0, e.start) + 1
        raise ScenarioError(f"{source}: not UTF-8 text (byte {text[e.start]:#04x} at line {line}, "
                            f"offset {e.start}); TOML files are UTF-8") from None
    try:
        data = tomllib.loads(doc)
    except tomllib.TOMLDecodeError as e:
        raise ScenarioError(f"{source}: invalid TOML: {e}") from None
    except RecursionError:
        raise ScenarioError(f"{source}: invalid TOML: arrays or inline tables nested too deeply") from None
    except ValueError:  # int() refuses a decimal literal longer than sys.get_int_max_str_digits()
        limit = sys.get_int_max_str_digits()
        m = re.search(rf"\d[\d_]{{{max(limit - 1, 1)},}}", doc)
        at = f" (at line {doc.count(chr(10), 0, m.start()) + 1})" if m else ""
        raise ScenarioError(f"{source}: invalid TOML: an integer with more than {limit} digits{at}") from None
    return parse(data, source, default_name=p.stem)


def parse(data: dict, source: str = "<scenario>", default_name: str = "scenario") -> Scenario:
    c = _Ctx(source)
    for k in data:
        if k not in TOP_KEYS:
            c.fail("top level", _unknown("key", k, sorted(TOP_KEYS)))
    name = _str(c, "top level", "name", data.get("name", default_name))
    description = _str(c, "top level", "description", data.get("description", ""))
    profile = _profile(c, "top level", "profile", data.get("profile", "linux-6.12"))
    profiles = data.get("profiles", [profile])
    if not isinstance(profiles, list) or not profiles:
        c.fail("top level", f"'profiles' must be a non-empty array of profile names, got "
                            f"{'an empty array' if profiles == [] else _got(profiles)}")
    profiles = tuple(_profile(c, "top level", f"profiles[{i}]", x) for i, x in enumerate(profiles))
    system = _system(c, data.get("system", {}), data.get("devices", []))
    devices = {d.name for d in system.devices}
    steps_raw = data.get("steps", [])
    if not isinstance(steps_raw, list) or not all(isinstance(s, dict) for s in steps_raw):
        c.fail("top level", "'steps' must be an array of tables ([[steps]])")
    explore = data.get("explore", {})
    if not isinstance(explore, dict):
        c.fail("top level", "'explore' must be a table ([explore])")
    for k in explore:
        if k != "events":
            c.fail("[explore]", _unknown("key", k, ["events"]))
    events_raw = explore.get("events", [])
    if not isinstance(events_raw, list) or not all(isinstance(s, dict) for s in events_raw):
        c.fail("[explore]", "'events' must be an array of tables")
    # names bound by `as` anywhere in events may be used by other events (order is explored)
    event_names = {e.get("as") for e in events_raw if isinstance(e.get("as"), str)}
    bound: set[str] = set()
    for i, raw in enumerate(steps_raw):
        if isinstance(raw.get("as"), str):
            c.binders.setdefault(raw["as"], i)
    steps = [_step(c, f"step {i}", i, raw, devices, bound, event=False) for i, raw in enumerate(steps_raw)]
    ev_bound = bound | event_names
    events = [_step(c, f"event {i}", i, raw, devices, ev_bound, event=True) for i, raw in enumerate(events_raw)]
    labels = [e.label for e in events]
    for e in events:
        for a in e.after:
            if a not in labels:
                close = difflib.get_close_matches(a, labels, n=1, cutoff=0.6)
                listing = ", ".join(map(_show, dict.fromkeys(labels)))
                hint = [f"did you mean {close[0]!r}?"] if close else []
                hint += [f"labels: {listing}" if len(listing) < 200 else f"{len(labels)} labels"]
                c.fail(f"event {e.index}", f"'after' names {_show(a)}, which is no event's label ({'; '.join(hint)})")
    _check_after_cycles(c, events)
    return Scenario(source, name, description, profile, profiles, system, steps, events)


def _check_after_cycles(c, events: list[Step]) -> None:
    """Every event must be able to run in some order: the explorer enables an event once, for each
    label in its 'after', some event with that label is done (so a cycle of 'after's runs nothing)."""
    waiting = {e.index: set(e.after) for e in events}
    waiters: dict[str, list[int]] = {}
    for e in events:
        for a in e.after:
            waiters.setdefault(a, []).append(e.index)
    ready = [e.index for e in events if not e.after]
    done: set[str] = set()
    while ready:
        label = events[ready.pop()].label
        if label in done:
            continue
        done.add(label)
        for i in waiters.get(label, ()):
            waiting[i].discard(label)
            if not waiting[i]:
                ready.append(i)
    for e in events:
        if waiting[e.index]:
            waits = ", ".join(_show(a) for a in sorted(waiting[e.index]))
            c.fail(f"event {e.index}", f"'after' makes a cycle: {_show(e.label)} waits on {waits}, "
                                       f"which can only run after it; no order runs it")


def _str(c, where, key, v) -> str:
    if not isinstance(v, str):
        c.fail(where, f"{key!r} must be a string, got {_got(v)}")
    return v


def _bool(c, where, key, v) -> bool:
    if not isinstance(v, bool):
        c.fail(where, f"{key!r} must be true or false, got {_got(v)}")
    return v


def _int(c, where, key, v, hi: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        c.fail(where, f"{key!r} must be an integer, got {_got(v)}")
    if v < 0:
        c.fail(where, f"{key!r} = {_show(v)} is negative")
    if v > hi:
        c.fail(where, f"{key!r} = {_hex(v)} does not fit in {hi.bit_length()} bits")
    return v


def _profile(c, where, key, v) -> str:
    v = _str(c, where, key, v)
    if v not in PROFILES:
        c.fail(where, f"{key!r}: " + _unknown("profile", v, PROFILES, suggest=False))
    return v


def _system(c, sysraw, devraw) -> System:
    where = "[system]"
    if not isinstance(sysraw, dict):
        c.fail("top level", "'system' must be a table ([system])")
    allowed = {"iommu", "units", "kvm", "intel_page_table"}
    for k in sysraw:
        if k not in allowed:
            c.fail(where, _unknown("key", k, sorted(allowed)))
    iommu = _str(c, where, "iommu", sysraw.get("iommu", "intel"))
    if iommu not in IOMMU_KINDS:
        c.fail(where, "'iommu': " + _unknown("IOMMU", iommu, IOMMU_KINDS))
    kvm = _bool(c, where, "kvm", sysraw.get("kvm", False))
    pt = _str(c, where, "intel_page_table", sysraw.get("intel_page_table", "second-level"))
    if pt not in INTEL_PAGE_TABLES:
        c.fail(where, f"'intel_page_table': {_show(pt)} is not one of {', '.join(INTEL_PAGE_TABLES)}")
    units_raw = sysraw.get("units", [{"name": "unit0"}])
    if not isinstance(units_raw, list) or not units_raw or not all(isinstance(u, dict) for u in units_raw):
        c.fail(where, "'units' must be a non-empty array of tables like { name = \"dmar0\", snoop_control = true }")
    units = []
    for i, u in enumerate(units_raw):
        w = f"[system] units[{i}]"
        for k in u:
            if k not in {"name", "snoop_control", "nesting", "dirty_tracking"}:
                c.fail(w, _unknown("key", k, ["name", "snoop_control", "nesting", "dirty_tracking"]))
        if "name" not in u:
            c.fail(w, "missing key 'name'")
        units.append(Unit(_str(c, w, "name", u["name"]), _bool(c, w, "snoop_control", u.get("snoop_control", True)),
                          _bool(c, w, "nesting", u.get("nesting", False)),
                          _bool(c, w, "dirty_tracking", u.get("dirty_tracking", False))))
    unit_names = [u.name for u in units]
    for i, n in enumerate(unit_names):
        if n in unit_names[:i]:
            c.fail(f"[system] units[{i}]", f"duplicate unit name {_show(n)}")
    if not isinstance(devraw, list) or not all(isinstance(d, dict) for d in devraw):
        c.fail("top level", "'devices' must be an array of tables ([[devices]])")
    devices = []
    for i, d in enumerate(devraw):
        w = f"devices[{i}]"
        for k in d:
            if k not in {"name", "unit", "group", "canwbs"}:
                c.fail(w, _unknown("key", k, ["name", "unit", "group", "canwbs"]))
        if "name" not in d:
            c.fail(w, "missing key 'name'")
        name = _str(c, w, "name", d["name"])
        if not name:
            c.fail(w, "'name' is empty")
        if name in [x.name for x in devices]:
            c.fail(w, f"duplicate device name {_show(name)}")
        if "unit" in d:
            unit = _str(c, w, "unit", d["unit"])
            if unit not in unit_names:
                c.fail(w, "'unit': " + _unknown("unit", unit, unit_names, listing="units"))
        elif len(units) == 1:
            unit = units[0].name
        else:
            c.fail(w, f"missing key 'unit' (the system has {len(units)} units: {', '.join(unit_names)})")
        group = _str(c, w, "group", d.get("group", f"group-{name}"))
        devices.append(DeviceDesc(name, unit, group, _bool(c, w, "canwbs", d.get("canwbs", False)), cdev=i))
    return System(iommu=iommu, units=tuple(units), devices=tuple(devices), kvm=kvm, intel_page_table=pt)


def _ref(c, where, key, v, bound) -> str | int:
    if isinstance(v, str):
        if v not in bound:
            close = difflib.get_close_matches(v, sorted(bound), n=1, cutoff=0.6)
            later = c.binders.get(v) if c.current is not None else None
            hint = ("its own 'as' binds it only once the step has run" if later == c.current else
                    f"step {later} binds it, later" if later is not None else
                    f"did you mean {close[0]!r}?" if close else "")
            c.fail(where, f"{key!r}: name {_show(v)} is not bound by an earlier step's 'as'"
                          + (f" ({hint})" if hint else ""))
        return v
    if isinstance(v, bool) or not isinstance(v, int):
        c.fail(where, f"{key!r} must be a name bound by an earlier 'as' or an integer id, got {_got(v)}")
    return _int(c, where, key, v, U32)


def _step(c, where, index, raw, devices, bound, event: bool) -> Step:
    c.current = None if event else index
    if "op" not in raw:
        c.fail(where, "missing key 'op'")
    op = raw["op"]
    if not isinstance(op, str):
        c.fail(where, f"'op' must be a string, got {_got(op)} (ops: {', '.join(OPS)})")
    if op not in OPS:
        c.fail(where, _unknown("op", op, list(OPS)))
    spec = OPS[op]
    extra = {"after", "label"} if event else set()
    args = {}
    for k, v in raw.items():
        if k in COMMON_KEYS or k in extra:
            continue
        if k not in spec:
            c.fail(where, f"op {op!r}: " + _unknown("key", k, list(spec) + sorted((COMMON_KEYS | extra) - {"op"})))
        typ = spec[k][0]
        w = f"{where} ({op})"
        if typ == "device":
            v = _str(c, w, k, v)
            if v not in devices:
                c.fail(w, f"{k!r}: " + _unknown("device", v, sorted(devices), listing="devices"))
        elif typ == "ref":
            v = _ref(c, w, k, v, bound)
        elif typ == "name":
            v = _str(c, w, k, v)
            if not v:
                c.fail(w, "'as' is empty")
        elif typ == "u64":
            v = _int(c, w, k, v, U64)
        elif typ == "bool":
            v = _bool(c, w, k, v)
        elif typ == "flags":
            if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
                c.fail(w, f"{k!r} must be an array of flag names ({', '.join(uapi.HWPT_ALLOC_FLAGS)}), "
                          f"got {_got(v)}")
            for x in v:
                if x not in uapi.HWPT_ALLOC_FLAGS:
                    c.fail(w, f"{k!r}: " + _unknown("flag", x, list(uapi.HWPT_ALLOC_FLAGS)))
        args[k] = v
    for k, (_, required) in spec.items():
        if required and k not in args:
            c.fail(f"{where} ({op})", f"missing key {k!r}")
    if "as" in args:
        bound.add(args["as"])
    if "note" in raw:
        _str(c, where, "note", raw["note"])
    expect = _expect(c, f"{where} expect", raw["expect"], bound) if "expect" in raw else None
    ebp = raw.get("expect_by_profile", {})
    if not isinstance(ebp, dict):
        c.fail(where, f"'expect_by_profile' must be a table of profile = {{ expect... }}, got {_got(ebp)}")
    by_profile = {}
    for prof, e in ebp.items():
        if prof not in PROFILES:
            c.fail(f"{where} expect_by_profile", _unknown("profile", prof, PROFILES, suggest=False))
        by_profile[prof] = _expect(c, f"{where} expect_by_profile.{prof}", e, bound)
    after: tuple[str, ...] = ()
    label = ""
    if event:
        label = raw.get("label", f"{op}:{args['device']}" if "device" in args else f"{op}:{index}")
        _str(c, where, "label", label)
        a = raw.get("after", [])
        if isinstance(a, str):
            a = [a]
        if not isinstance(a, list) or not all(isinstance(x, str) for x in a):
            c.fail(where, f"'after' must be a label or an array of labels (e.g. \"attach:gpu\"), got {_got(a)}")
        after = tuple(a)
    return Step(index, op, args, expect, by_profile, after, label)


def _expect(c, where, e, bound) -> dict:
    if not isinstance(e, dict):
        c.fail(where, f"must be a table like {{ ok = true }}, got {_type_name(e)}")
    for k, v in e.items():
        if k not in EXPECT_KEYS:
            c.fail(where, _unknown("key", k, list(EXPECT_KEYS)))
        if k == "pt":
            _ref(c, where, k, v, bound)
        elif k == "errno":
            _str(c, where, k, v)
            try:
                uapi.errno_value(v)
            except KeyError:
                close = difflib.get_close_matches(v.upper(), _ERRNO_NAMES, n=1, cutoff=0.6)
                c.fail(where, f"'errno': {_show(v)} is not an errno name "
                              f"({'did you mean ' + repr(close[0]) + '?' if close else 'e.g. EINVAL, EBUSY'})")
        elif k == "hazards":
            if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
                c.fail(where, f"'hazards' must be an array of hazard kinds ({', '.join(KINDS)}), got {_got(v)}")
            for x in v:
                if x not in KINDS:
                    c.fail(where, "'hazards': " + _unknown("kind", x, KINDS))
        elif k == "domains":
            _int(c, where, k, v, U32)
        elif k == "ok":
            _bool(c, where, k, v)
    if e.get("ok") is True and "errno" in e:
        c.fail(where, f"ok = true contradicts errno = {_show(e['errno'])} (a step that returns an errno failed)")
    return e
