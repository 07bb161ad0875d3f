"""Hypothesis stateful tests: random op sequences through the client API keep the
kernel model's invariants (DESIGN.md "Tests and benchmarks").

One ``RuleBasedStateMachine`` per kernel era drives an emulated Intel machine through
``pyiommufd.client`` only -- the same calls a VMM makes -- and after every step checks:

* the object table: ids unique, within 1..limit, nothing left half-built;
* refcounts: every object's ``users`` is 1 + the references held on it;
* every filled paging HWPT mirrors its IOAS's areas; no device in two HWPTs; every auto
  HWPT has a device; each iommu group sits in the domain of its igroup's HWPT;
* reserved regions and DMA ownership match what is attached / bound;
* a failing call leaves ``Host.snapshot()`` unchanged (two documented kernel exceptions:
  IOAS_UNMAP keeps the areas removed before the failing one, and the E1/E2 CC upgrade is
  not undone when the attach fails after it -- 6.2.1 iommufd_device_do_attach, 6.6.0
  iommufd_hw_pagetable_attach / iommufd_device_do_replace);
* a successful DESTROY removes exactly one object;
* a shadow model agrees on the easy things: which ids are live and which id the next
  allocation gets (lowest free), the areas of every IOAS, DESTROY's errno, EEXIST on an
  overlapping MAP, UNMAP's result (ENOENT on a range that cuts an area).

Each profile's machine runs inside one pytest function that then checks the run was not
vacuous (Stateright's "sometimes" properties): the interesting outcomes were reached.
"""
from __future__ import annotations

import errno
from collections import Counter

import pytest

from conftest import MIXED_SYSTEM
from hypothesis import HealthCheck, settings, strategies as st
from hypothesis.stateful import (Bundle, RuleBasedStateMachine, initialize, invariant, multiple, precondition,
                                 rule, run_state_machine_as_test)

from pyiommufd import uapi
from pyiommufd.client import U64_MAX, Iommufd, Ioas, VfioDevice, VfioGroup, emulated

PAGE = 0x1000
U32_MAX = (1 << 32) - 1
MSI_START, MSI_LAST = 0xFEE00000, 0xFEEFFFFF

SYSTEM = MIXED_SYSTEM   # nic (SC, nesting, dirty tracking), gpu (no SC), ssd0/ssd1 in one group
DEVICES = tuple(d.name for d in SYSTEM.devices)
GROUP_OF = {d.name: d.group for d in SYSTEM.devices}
GROUPS = SYSTEM.groups

SETTINGS = settings(max_examples=100, stateful_step_count=30, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


# -- snapshot helpers ---------------------------------------------------------------------------
# Positions in Host.snapshot() (kernel/host.py): [0] ctxs as (fd, (fd, objects, ...)) with objects
# as (id, type, users, object snapshot); an IOAS's is (iopt snapshot = (areas, ...), hwpt ids), a
# paging HWPT's (ioas id, domain serial, auto, enforce_cc, ...); [4] domains as (serial, domain
# snapshot) with enforce_cc at 3, set_pte_snp 4, ptes 11, upgraded_over 12 (drivers/base.py).
# The masks keep whatever follows, so fields appended later do not break them.
def _map_objects(snap, fn):
    """Rebuild a Host.snapshot() with fn(type, osnap) applied to every object snapshot."""
    ctxs = tuple((fd, (c[0], tuple((i, t, u, fn(t, o)) for i, t, u, o in c[1]), *c[2:]))
                 for fd, c in snap[0])
    return (ctxs, *snap[1:])


def _map_domains(snap, fn):
    return (*snap[:4], tuple((s, fn(d)) for s, d in snap[4]), *snap[5:])


def _ioas_areas(snap):
    return {i: set(o[0][0]) for _, c in snap[0] for i, t, _, o in c[1] if t == "ioas"}


def mask_unmapped(snap, ioas_id):
    """Blank the areas of ``ioas_id`` (and what each maps: the iopt snapshot's element 5) and every
    domain's IOPTEs (what a failed UNMAP may change)."""
    ctxs = tuple((fd, (c[0], tuple((i, t, u, ((None, *o[0][1:5], None, *o[0][6:]), o[1])
                                              if t == "ioas" and i == ioas_id else o)
                                   for i, t, u, o in c[1]), *c[2:])) for fd, c in snap[0])
    return _map_domains((ctxs, *snap[1:]), lambda d: (*d[:11], None, *d[12:]))


def _cc_state(snap):
    hw = {i: o[3] for _, c in snap[0] for i, t, _, o in c[1] if t == "hwpt_paging"}
    dom = {s: (d[3], d[4]) for s, d in snap[4]}
    return hw, dom


def mask_cc(snap):
    """Blank the CC state of HWPTs and domains (what a failed E1/E2 attach may have upgraded)."""
    snap = _map_objects(snap, lambda t, o: (*o[:3], None, *o[4:]) if t == "hwpt_paging" else o)
    return _map_domains(snap, lambda d: (*d[:3], None, None, *d[5:12], None, *d[13:]))


def check_only_upgraded(before, after):
    """The CC state only went from off to on (never the other way), nothing else changed."""
    assert mask_cc(before) == mask_cc(after), \
        f"failed attach changed more than the CC state:\nbefore={before}\nafter ={after}"
    (hb, db), (ha, da) = _cc_state(before), _cc_state(after)
    for i, cc in ha.items():
        assert cc >= hb[i], f"HWPT {i} lost enforce_cc in a failed call"
    for s, (cc, snp) in da.items():
        assert cc >= db[s][0] and snp >= db[s][1], f"domain {s} lost its CC state in a failed call"


def check_lost_whole_areas(before, after, ioas_id):
    """A failed UNMAP: only whole areas of that IOAS (and their IOPTEs) went away."""
    assert mask_unmapped(before, ioas_id) == mask_unmapped(after, ioas_id), "failed UNMAP changed more than areas"
    ab, aa = _ioas_areas(before).get(ioas_id, set()), _ioas_areas(after).get(ioas_id, set())
    assert aa <= ab, "failed UNMAP created or altered an area"
    db, da = dict(before[4]), dict(after[4])
    for s, d in da.items():
        assert set(d[11]) <= set(db[s][11]), f"failed UNMAP added IOPTEs to domain {s}"


# -- kernel-state invariants (read from the emulated host) ------------------------------------
def check_kernel_invariants(host) -> None:
    limit = (1 << host.profile.id_bits) - 1
    p = host.profile
    attached_names: dict[str, object] = {}
    for ctx in host.ctxs.values():
        objs = ctx.objects
        assert not ctx.building, f"ids left reserved between ioctls: {sorted(ctx.building)}"
        for i, o in objs.items():
            assert o.id == i and 1 <= i <= limit
        # users = 1 (the xarray) + one per reference held on the object
        want = {i: 1 for i in objs}
        for o in objs.values():
            if o.type == "hwpt_paging":
                assert objs.get(o.ioas.id) is o.ioas, f"HWPT {o.id} on a dead IOAS"
                want[o.ioas.id] += 1
            elif o.type == "hwpt_nested":
                assert objs.get(o.parent.id) is o.parent
                want[o.parent.id] += 1
            elif o.type == "device":
                want[o.id] += 1                      # the binding driver
                assert ctx.groups.get(o.igroup.group.name) is o.igroup
        seen_idevs = set()
        for name, ig in ctx.groups.items():
            assert ig.group.name == name
            assert (ig.hwpt is None) == (not ig.devices), f"igroup {name}: hwpt without devices or vice versa"
            if ig.hwpt is not None:
                assert objs.get(ig.hwpt.id) is ig.hwpt, f"igroup {name} on a dead HWPT"
                want[ig.hwpt.id] += len(ig.devices)
            for d in ig.devices:
                assert objs.get(d.id) is d and d.igroup is ig
                assert d.id not in seen_idevs, f"device {d.id} in two device lists"
                seen_idevs.add(d.id)
                want[d.id] += 1                      # attached
            # the iommu group is in the domain of its igroup's HWPT
            assert ig.group.domain is (ig.hwpt.domain if ig.hwpt is not None else None), \
                f"group {name}: domain does not match igroup HWPT"
            assert any(o.type == "device" and o.igroup is ig for o in objs.values()), f"stale igroup {name}"
        got = {i: o.users for i, o in objs.items()}
        assert got == want, f"users drift: got {got}, want {want}"
        for o in objs.values():
            if o.type == "hwpt_paging":
                iopt = o.ioas.iopt
                assert sum(h is o for h in o.ioas.hwpt_list) == 1, f"HWPT {o.id} not exactly once on its IOAS list"
                if p.era != "E1":
                    assert o.filled, f"HWPT {o.id} not filled"
                if o.filled:
                    assert {s: v[0] for s, v in o.domain.ptes.items()} == {s: v[0] for s, v in iopt.areas.items()}, \
                        f"HWPT {o.id} does not mirror IOAS {o.ioas.id}"
                    assert sum(d is o.domain for d in iopt.domains) == 1, f"HWPT {o.id}'s domain not once in iopt"
                else:
                    assert not o.domain.ptes and all(d is not o.domain for d in iopt.domains)
                if o.auto_domain:
                    assert any(ig.hwpt is o and ig.devices for ig in ctx.groups.values()), \
                        f"auto HWPT {o.id} has no device"
                if o.enforce_cc:
                    assert o.domain.enforce_cc
                if p.intel_driver_checks and o.domain.enforce_cc:
                    for n in o.domain.devices:
                        assert host.units[host.devices[n].unit].snoop_control, \
                            f"non-SC device {n} in CC domain of HWPT {o.id}"
            elif o.type == "ioas":
                filled = [h.domain for h in objs.values() if h.type == "hwpt_paging" and h.ioas is o and h.filled]
                assert len(o.iopt.domains) == len(filled) and all(any(d is f for f in filled) for d in o.iopt.domains)
                assert set(h.id for h in o.hwpt_list) == {h.id for h in objs.values()
                                                        if h.type == "hwpt_paging" and h.ioas is o}
                # reserved regions: exactly the devices attached to paging HWPTs on this IOAS
                owners = {r[2] for r in o.iopt.reserved}
                want_owners = {d.dev.name for ig in ctx.groups.values() if ig.hwpt is not None
                               and ig.hwpt.type == "hwpt_paging" and ig.hwpt.ioas is o for d in ig.devices}
                assert owners == want_owners, f"IOAS {o.id} reserved owners {owners}, want {want_owners}"
                # aperture reservations: one per filled domain with a limited aperture.  Up to
                # 6.11 an Intel domain filled before its first attach has a 57-bit aperture that
                # the attach narrows afterwards; the IOAS keeps the wider reservation.
                if hasattr(o.iopt, "outside"):
                    def ends(d):
                        e = {d.aperture_end + 1}
                        if d.driver == "intel" and not host.profile.intel_aperture_at_alloc:
                            e.add(1 << 57)
                        return e
                    got = sorted((r[0], r[2]) for r in o.iopt.outside)
                    want_n = sorted([d.serial for d in o.iopt.domains if d.aperture_end != U64_MAX]
                                    + [d.serial for d in o.iopt.domains if d.aperture_start])
                    doms = {d.serial: d for d in o.iopt.domains}
                    assert sorted(s for _, s in got) == want_n and all(
                        start == 0 or start in ends(doms[s]) for start, s in got), \
                        f"IOAS {o.id} aperture reservations {o.iopt.outside}"
                # areas never overlap, never touch a reserved range
                prev_last = -1
                for s, (l, _) in o.iopt.areas.items():
                    assert s > prev_last and l >= s
                    prev_last = l
                    assert not o.iopt.reserved_iter_first(s, l)
        if ctx.vfio_ioas is not None:
            assert objs.get(ctx.vfio_ioas.id) is ctx.vfio_ioas
        for ig in ctx.groups.values():
            if ig.hwpt is not None:
                for n in ig.group.devices:
                    assert n not in attached_names, f"{n} attached in two ctxs"
                    attached_names[n] = ig.hwpt
    # no device in two domains; each domain's device list is the groups attached to it
    in_domain: dict[str, int] = {}
    for g in host.groups.values():
        if g.domain is None:
            continue
        for n in g.devices:
            assert n in g.domain.devices
        for n in g.domain.devices:
            assert n not in in_domain or in_domain[n] == g.domain.serial, f"{n} in two domains"
            in_domain[n] = g.domain.serial
    for g in host.groups.values():
        if g.domain is not None:
            assert sorted(g.domain.devices) == sorted(n for n, s in in_domain.items() if s == g.domain.serial)
        if not any(name == g.name for c in host.ctxs.values() for name, ig in c.groups.items() if ig.hwpt):
            assert g.domain is None, f"group {g.name} in a domain no igroup accounts for"
        # DMA ownership: one claim per bound device
        bound = [n for n in g.devices if host.devices[n].ctx_fd is not None]
        assert g.owner_cnt == len(bound) and (g.owner is None) == (not bound)
    # VFIO's view agrees with iommufd's
    for dev in host.devices.values():
        if dev.ctx_fd is None:
            assert dev.idev_id is None and not dev.attached and dev.open_via is None
            continue
        idev = host.ctxs[dev.ctx_fd].objects[dev.idev_id]
        assert idev.type == "device" and idev.dev is dev
        assert dev.attached == (idev in idev.igroup.devices)


# -- the shadow model --------------------------------------------------------------------------
def lowest_free(ids) -> int:
    i = 1
    while i in ids:
        i += 1
    return i


class Shadow:
    """What a user can predict without knowing the CC rules."""

    def __init__(self):
        self.kind: dict[int, str] = {}      # id -> ioas | hwpt | auto | nested | device
        self.parent: dict[int, int] = {}    # hwpt -> IOAS (paging) or parent HWPT (nested)
        self.areas: dict[int, dict[int, int]] = {}  # IOAS -> {start: last}
        self.dev_id: dict[str, int] = {}    # bound device -> DEVICE id
        self.dev_pt: dict[str, int] = {}    # attached device -> HWPT id
        self.compat: int | None = None      # IOMMU_VFIO_IOAS

    def next_id(self) -> int:
        return lowest_free(self.kind)

    def add(self, i: int, kind: str, parent: int | None = None) -> None:
        assert i not in self.kind
        self.kind[i] = kind
        if parent is not None:
            self.parent[i] = parent
        if kind == "ioas":
            self.areas[i] = {}

    def prune_autos(self) -> None:
        """Auto HWPTs die with their last device."""
        used = set(self.dev_pt.values())
        for i in [i for i, k in self.kind.items() if k == "auto" and i not in used]:
            del self.kind[i], self.parent[i]

    def destroy_errno(self, i: int) -> int | None:
        k = self.kind.get(i)
        if k is None:
            return errno.ENOENT
        if k == "device" or k == "auto":
            return errno.EBUSY
        if k == "ioas" and any(p == i and self.kind[h] != "nested" for h, p in self.parent.items()):
            return errno.EBUSY
        if k in ("hwpt", "nested") and (i in self.dev_pt.values() or any(
                p == i and self.kind[h] == "nested" for h, p in self.parent.items())):
            return errno.EBUSY
        return None

    def destroy(self, i: int) -> None:
        del self.kind[i]
        self.parent.pop(i, None)
        self.areas.pop(i, None)
        if self.compat == i:
            self.compat = None

    # IOAS_MAP / IOAS_UNMAP
    def overlaps(self, ioas: int, start: int, last: int) -> bool:
        return any(s <= last and l >= start for s, l in self.areas[ioas].items())

    def unmap(self, ioas: int, iova: int, length: int) -> tuple[int | None, int]:
        """Returns (errno or None, bytes unmapped); removes the whole areas as the kernel does."""
        if ioas not in self.areas:
            return errno.ENOENT, 0
        areas = self.areas[ioas]
        if iova == 0 and length == U64_MAX:
            n = sum(l - s + 1 for s, l in areas.items())
            areas.clear()
            return None, n
        if iova >= U64_MAX or length >= U64_MAX:
            return errno.EOVERFLOW, 0
        if length == 0:
            return errno.EINVAL, 0
        last = iova + length - 1
        if last > U64_MAX:
            return errno.EOVERFLOW, 0
        n = 0
        for s in sorted(areas):
            l = areas[s]
            if l < iova or s > last:
                continue
            if s < iova or l > last:
                return errno.ENOENT, n
            del areas[s]
            n += l - s + 1
        return (None if n else errno.ENOENT), n


# -- strategies -------------------------------------------------------------------------------
def iovas():
    window = st.integers(0, 63).map(lambda p: 0x100000 + p * PAGE)
    return st.one_of(
        st.none(),                                             # kernel picks the IOVA
        window, window,                                        # page-aligned, overlapping often
        st.tuples(window, st.integers(1, PAGE - 1)).map(sum),  # unaligned
        st.sampled_from([0, MSI_START, MSI_START + 0x3000, MSI_START - PAGE, U64_MAX - PAGE + 1, U64_MAX,
                         1 << 63]))


def lengths():
    return st.one_of(st.integers(1, 8).map(lambda n: n * PAGE), st.integers(1, 8).map(lambda n: n * PAGE),
                     st.sampled_from([0, 0, 0x800, PAGE + 1, U64_MAX, 1 << 63, 2 * PAGE]))


def unmap_ranges():
    window = st.integers(0, 63).map(lambda p: 0x100000 + p * PAGE)
    return st.one_of(
        st.just((0, U64_MAX)),
        st.tuples(window, st.integers(1, 16).map(lambda n: n * PAGE)),
        st.tuples(window, st.integers(1, 16).map(lambda n: n * PAGE)),
        st.tuples(window, st.sampled_from([0, 0x800, U64_MAX, 1 << 63])),
        st.tuples(st.one_of(window, st.just(0)), st.just(0)),
        st.tuples(st.sampled_from([0x100000, 0xFFFFF, 1, U64_MAX - 1, U64_MAX]),
                  st.sampled_from([0x40000, PAGE, U64_MAX, 2])))


PROTS = st.sampled_from(["rw"] * 6 + ["r", "none", "badflag"])
HWPT_FLAGS = st.sampled_from([0, 0, 0, 0, 0, uapi.IOMMU_HWPT_ALLOC_NEST_PARENT, uapi.IOMMU_HWPT_ALLOC_DIRTY_TRACKING,
                              uapi.IOMMU_HWPT_ALLOC_NEST_PARENT | uapi.IOMMU_HWPT_ALLOC_DIRTY_TRACKING,
                              uapi.IOMMU_HWPT_FAULT_ID_VALID, 1 << 7])
VTD_S1 = bytes(uapi.iommu_hwpt_vtd_s1(pgtbl_addr=0x1000, addr_width=48))
HWPT_DATA = st.sampled_from([(0, None)] * 6 + [(uapi.IOMMU_HWPT_DATA_VTD_S1, VTD_S1),
                             (uapi.IOMMU_HWPT_DATA_VTD_S1, None), (0, VTD_S1), (7, VTD_S1)])


ioases = Bundle("ioases")   # ids returned by IOAS_ALLOC
hwpts = Bundle("hwpts")     # ids returned by HWPT_ALLOC and by attach (auto HWPTs)


IOAS_REF = st.one_of(ioases, ioases, ioases, ioases, st.integers(0, 12))
PT_REF = st.one_of(ioases, ioases, ioases, hwpts, hwpts, st.integers(0, 12))
OBJ_REF = st.one_of(ioases, hwpts, hwpts, st.integers(0, 14), st.just(U32_MAX))


class Failed:
    __slots__ = ("errno",)

    def __init__(self, err):
        self.errno = err


# -- the machine ------------------------------------------------------------------------------
class IommufdMachine(RuleBasedStateMachine):
    """Common rules (IOAS, MAP, UNMAP, DESTROY, HWPT_ALLOC, GET_HW_INFO) and the checks."""

    profile = "linux-6.12"
    stats: Counter = Counter()   # (op, errno name or "ok") over the whole run, per subclass

    def __init__(self):
        super().__init__()
        self.emu = emulated(SYSTEM, self.profile)
        self.host = self.emu.host
        self.t = self.emu.transport
        self.ifd = Iommufd(self.t)
        self.uva = self.t.mmap(PAGE)   # MAP does not pin without domains; the user_va is never read
        self.shadow = Shadow()
        self.close_ifd_first = False

    @property
    def ctx(self):
        return self.host.ctxs[self.ifd.fd]

    # -- the call wrapper: snapshot, call, classify --------------------------------------
    def call(self, op: str, fn, *, ioas_id: int | None = None, may_upgrade: bool = False):
        before = self.host.snapshot()
        ids_before = set(self.ctx.objects)
        try:
            res = fn()
        except OSError as e:
            type(self).stats[(op, uapi.errno_name(e.errno))] += 1
            after = self.host.snapshot()
            if after != before:
                if op == "unmap":
                    check_lost_whole_areas(before, after, ioas_id)
                elif may_upgrade and (self.host.profile.upgrade_on_attach or self.host.profile.upgrade_on_replace):
                    check_only_upgraded(before, after)
                    type(self).stats[(op, "upgrade-kept")] += 1
                else:
                    raise AssertionError(f"{op} failed with {uapi.errno_name(e.errno)} and changed the state:\n"
                                         f"before={before}\nafter ={after}")
            return Failed(e.errno)
        type(self).stats[(op, "ok")] += 1
        if op == "destroy":
            gone = ids_before - set(self.ctx.objects)
            assert len(gone) == 1 and set(self.ctx.objects) <= ids_before, f"DESTROY removed {gone}"
        return res

    def expect(self, res, err: int | None) -> None:
        got = res.errno if isinstance(res, Failed) else None
        assert got == err, f"expected {uapi.errno_name(err) if err else 'success'}, got " \
                           f"{uapi.errno_name(got) if got else 'success'}"

    def pick_device(self, d, pool, *, any_ids: bool = False):
        """Mostly a device from ``pool`` (the useful choice now); sometimes any device
        (or, with ``any_ids``, any id) to reach the error paths."""
        pool = sorted(pool)
        if pool and d.draw(st.integers(0, 7), label="from pool") > 0:
            return d.draw(st.sampled_from(pool), label="device")
        return d.draw(st.one_of(st.sampled_from(DEVICES), st.integers(0, 12)) if any_ids
                      else st.sampled_from(DEVICES), label="device")

    def dev_ref(self, ref) -> int:
        return self.shadow.dev_id.get(ref, 0) if isinstance(ref, str) else ref

    # -- a baseline, so short runs still reach the interesting states ----------------------
    def first_ioas(self, pages, ifd_first):
        self.close_ifd_first = ifd_first   # teardown order: the ctx must outlive its fd while used
        ioas = self.ioas_alloc()
        for p in pages:
            self._map(ioas, 0x100000 + p * PAGE, PAGE, "rw")
        return ioas

    # -- rules: IOAS --------------------------------------------------------------------
    @rule(target=ioases)
    def ioas_alloc(self):
        want = self.shadow.next_id()
        res = self.call("ioas_alloc", lambda: self.ifd.ioas_alloc().id)
        if isinstance(res, Failed):
            raise AssertionError(f"IOAS_ALLOC failed: {res.errno}")
        assert res == want, f"IOAS_ALLOC gave id {res}, the lowest free is {want}"
        self.shadow.add(res, "ioas")
        return res

    @rule(ioas=IOAS_REF, iova=iovas(), length=lengths(), prot=PROTS, d=st.data())
    def map(self, ioas, iova, length, prot, d):
        areas = sorted(self.shadow.areas.get(ioas, {}).items())
        if areas and d.draw(st.booleans(), label="over an area"):   # EEXIST territory
            s, l = d.draw(st.sampled_from(areas), label="area")
            iova = d.draw(st.sampled_from([s, l - PAGE + 1, max(s - PAGE, 0)]), label="iova")
        self._map(ioas, iova, length, prot)

    def _map(self, ioas, iova, length, prot):
        flags = None
        if prot == "none":
            flags = uapi.IOMMU_IOAS_MAP_FIXED_IOVA if iova is not None else 0
        elif prot == "badflag":
            flags = 1 << 6
        res = self.call("map", lambda: Ioas(self.ifd, ioas).map(iova, length, writeable=prot != "r",
                                                                 user_va=self.uva, flags=flags))
        sh = self.shadow
        if ioas not in sh.areas:
            if prot != "badflag" and (iova or 0) < U64_MAX and length < U64_MAX and not (
                    prot == "none" and self.host.profile.map_requires_prot):
                self.expect(res, errno.ENOENT)
            return
        overlap = iova is not None and length and iova + length - 1 <= U64_MAX and sh.overlaps(
            ioas, iova, iova + length - 1)
        if isinstance(res, Failed):
            if res.errno == errno.EEXIST:
                assert overlap, "EEXIST without an overlapping area"
            return
        assert not overlap, "MAP over an existing area succeeded"
        assert length and (iova is None or res == iova)
        assert not sh.overlaps(ioas, res, res + length - 1)
        assert not (res <= MSI_LAST and res + length - 1 >= MSI_START and self.ctx.objects[ioas].iopt.reserved)
        sh.areas[ioas][res] = res + length - 1

    @rule(ioas=IOAS_REF, rng=unmap_ranges(), d=st.data())
    def unmap(self, ioas, rng, d):
        areas = sorted(self.shadow.areas.get(ioas, {}).items())
        if areas and d.draw(st.booleans(), label="an area"):
            i = d.draw(st.integers(0, len(areas) - 1), label="area")
            s, l = areas[i]
            end = d.draw(st.sampled_from([l, l, areas[-1][1], l + PAGE, l - PAGE, (s + l) // 2]), label="end")
            rng = (s, max(end - s + 1, 0))     # whole area(s), or a cut through one (ENOENT)
        self._unmap(ioas, rng)

    def _unmap(self, ioas, rng):
        iova, length = rng
        want_err, want_n = self.shadow.unmap(ioas, iova, length)
        res = self.call("unmap", lambda: Ioas(self.ifd, ioas).unmap(iova, length), ioas_id=ioas)
        self.expect(res, want_err)
        if want_err is None:
            assert res == want_n, f"UNMAP reported {res} bytes, shadow says {want_n}"

    @rule(obj=OBJ_REF)
    def destroy_rule(self, obj):
        self.destroy(obj)

    def destroy(self, obj):
        want = self.shadow.destroy_errno(obj)
        res = self.call("destroy", lambda: self.ifd.destroy(obj))
        self.expect(res, want)
        if want is None:
            self.shadow.destroy(obj)

    # -- rules: HWPT_ALLOC, GET_HW_INFO (ENOTTY before 6.6) --------------------------------
    @rule(target=hwpts, d=st.data(), pt=PT_REF, flags=HWPT_FLAGS, data=HWPT_DATA)
    def hwpt_alloc(self, d, pt, flags, data):
        return self._hwpt_alloc(self.pick_device(d, self.shadow.dev_id, any_ids=True), pt, flags, data)

    def _hwpt_alloc(self, dev, pt, flags, data):
        p = self.host.profile
        dev_id = self.dev_ref(dev)
        want = self.shadow.next_id()
        data_type, blob = data
        res = self.call("hwpt_alloc", lambda: self.ifd.hwpt_alloc(dev_id, pt, flags, data_type, blob))
        sh = self.shadow
        if p.hwpt_alloc is None:
            self.expect(res, errno.ENOTTY)
            return multiple()
        dev_ok = sh.kind.get(dev_id) == "device"
        if p.hwpt_alloc == "6.6":
            if data_type or blob:
                self.expect(res, errno.E2BIG)       # the 6.8 fields are past the 6.6 struct
            elif flags:
                self.expect(res, errno.EOPNOTSUPP)
            elif not dev_ok or sh.kind.get(pt) != "ioas":
                self.expect(res, errno.ENOENT)
        elif (data_type == 0) == bool(blob):
            self.expect(res, errno.EINVAL)
        elif not dev_ok:
            self.expect(res, errno.ENOENT)
        elif sh.kind.get(pt) not in ("ioas", "hwpt", "auto"):
            self.expect(res, errno.EINVAL)
        if isinstance(res, Failed):
            return multiple()
        assert res == want, f"HWPT_ALLOC gave id {res}, the lowest free is {want}"
        sh.add(res, "hwpt" if sh.kind[pt] == "ioas" else "nested", parent=pt)
        return res

    @rule(d=st.data(), data_len=st.sampled_from([0, 8, 24, 64]))
    def hw_info(self, d, data_len):
        self._hw_info(self.pick_device(d, self.shadow.dev_id, any_ids=True), data_len)

    def _hw_info(self, dev, data_len):
        dev_id = self.dev_ref(dev)
        res = self.call("hw_info", lambda: self.ifd.hw_info(dev_id, data_len))
        if self.host.profile.hw_info is None:
            self.expect(res, errno.ENOTTY)
        elif self.shadow.kind.get(dev_id) != "device":
            self.expect(res, errno.ENOENT)
        else:
            assert not isinstance(res, Failed)
            name = next(n for n, i in self.shadow.dev_id.items() if i == dev_id)
            assert res.kernel_data_len == 24
            if data_len >= 24:
                assert res.snoop_control == self.host.units[self.host.devices[name].unit].snoop_control

    # -- shared bookkeeping for attach results -----------------------------------------------
    def record_attach(self, name: str, pt: int, got: int, want_new: int) -> None:
        """The device (and, on a replace, its attached group siblings) is now on HWPT ``got``."""
        sh = self.shadow
        kind = sh.kind.get(pt)
        if kind == "ioas":
            if got in sh.kind:
                assert sh.kind[got] == "auto" and sh.parent[got] == pt, \
                    f"attach to IOAS {pt} reused HWPT {got} ({sh.kind[got]})"
            else:
                assert got == want_new, f"new auto HWPT got id {got}, the lowest free is {want_new}"
                sh.add(got, "auto", parent=pt)
        else:
            assert got == pt and kind in ("hwpt", "auto", "nested")
        group = GROUP_OF[name]
        siblings = [n for n in sh.dev_pt if GROUP_OF[n] == group and n != name]
        if name in sh.dev_pt:           # replace: the whole group moves
            for n in siblings:
                sh.dev_pt[n] = got
        else:
            for n in siblings:
                assert sh.dev_pt[n] == got, f"{name} attached to {got}, its sibling {n} is on {sh.dev_pt[n]}"
        sh.dev_pt[name] = got
        sh.prune_autos()

    # -- invariants -------------------------------------------------------------------------
    @invariant()
    def kernel_invariants(self):
        check_kernel_invariants(self.host)

    @invariant()
    def shadow_agrees(self):
        objs = self.ctx.objects
        sh = self.shadow
        kinds = {"ioas": "ioas", "hwpt": "hwpt_paging", "auto": "hwpt_paging", "nested": "hwpt_nested",
                 "device": "device"}
        assert {i: o.type for i, o in objs.items()} == {i: kinds[k] for i, k in sh.kind.items()}, \
            f"live ids: kernel {sorted(objs)}, shadow {sorted(sh.kind)}"
        for i, k in sh.kind.items():
            o = objs[i]
            if k in ("hwpt", "auto"):
                assert o.auto_domain == (k == "auto") and o.ioas.id == sh.parent[i]
            elif k == "nested":
                assert o.parent.id == sh.parent[i]
            elif k == "ioas":
                assert {s: v[0] for s, v in o.iopt.areas.items()} == sh.areas[i], f"IOAS {i} areas differ"
        for name, dev_id in sh.dev_id.items():
            idev = objs[dev_id]
            assert idev.dev.name == name
            hw = idev.igroup.hwpt if idev.attached else None
            assert (hw.id if hw else None) == sh.dev_pt.get(name), f"{name}: kernel says {hw}, shadow {sh.dev_pt.get(name)}"
        assert set(sh.dev_pt) <= set(sh.dev_id)
        assert (self.ctx.vfio_ioas.id if self.ctx.vfio_ioas else None) == sh.compat

    def teardown(self):
        """Closing every file drains the host: no ctx, no domain, no owner (iommufd_fops_release)."""
        self.close_all()
        host = self.host
        assert not host.ctxs and not host.files
        for g in host.groups.values():
            assert g.domain is None and g.owner is None and not g.owner_cnt
        for d in host.devices.values():
            assert d.ctx_fd is None and d.open_via is None


class CdevMachine(IommufdMachine):
    """6.6+: VFIO device cdevs, BIND / ATTACH (= replace when attached) / DETACH."""

    def __init__(self):
        super().__init__()
        self.cdevs: dict[str, VfioDevice] = {}

    @initialize(target=ioases, pages=st.lists(st.integers(0, 63), max_size=3), ifd_first=st.booleans(),
                bound=st.lists(st.sampled_from(DEVICES), unique=True, min_size=1),
                attached=st.lists(st.sampled_from(DEVICES), unique=True), user_hwpt=st.booleans())
    def baseline(self, pages, ifd_first, bound, attached, user_hwpt):
        """An IOAS with a few areas, some devices bound, some of those attached to it, maybe a
        user HWPT: whatever rules Hypothesis' swarm testing leaves enabled, there is state to use."""
        ioas = self.first_ioas(pages, ifd_first)
        for n in bound:
            self._bind(n)
        for n in attached:
            if n in self.shadow.dev_id:
                self._attach_rule(n, ioas)
        if user_hwpt:
            self._hwpt_alloc(bound[0], ioas, 0, (0, None))
        return ioas

    def cdev(self, name: str) -> VfioDevice:
        if name not in self.cdevs:
            self.cdevs[name] = VfioDevice(self.t, self.emu.cdev_path(name))
        return self.cdevs[name]

    @rule(d=st.data())
    def bind(self, d):
        self._bind(self.pick_device(d, [n for n in DEVICES if n not in self.shadow.dev_id]))

    def _bind(self, name):
        want = self.shadow.next_id()
        bound = name in self.shadow.dev_id
        cdev = self.cdev(name)
        res = self.call("bind", lambda: cdev.bind(self.ifd))
        if bound:
            self.expect(res, errno.EINVAL)
            return
        assert res == want, f"BIND gave id {res}, the lowest free is {want}"
        self.shadow.add(res, "device")
        self.shadow.dev_id[name] = res

    @precondition(lambda self: self.cdevs)
    @rule(data=st.data())
    def unbind(self, data):
        """Closing the cdev: detach (an auto HWPT may die), then the DEVICE goes."""
        name = data.draw(st.sampled_from(sorted(self.cdevs)))
        d = self.cdevs.pop(name)
        self.call("close", d.close)
        sh = self.shadow
        if name in sh.dev_id:
            sh.destroy(sh.dev_id.pop(name))
            sh.dev_pt.pop(name, None)
            sh.prune_autos()

    def _attach(self, op: str, name: str, pt: int):
        sh = self.shadow
        want_new = sh.next_id()
        cdev = self.cdev(name)   # opening the cdev is not part of the call
        res = self.call(op, lambda: cdev.attach(pt), may_upgrade=True)
        if name not in sh.dev_id:
            self.expect(res, errno.EINVAL)        # access not granted
            return
        if pt not in sh.kind:
            self.expect(res, errno.ENOENT)
            return
        if sh.kind[pt] == "device":
            self.expect(res, errno.EINVAL)
            return
        if isinstance(res, Failed):
            return
        self.record_attach(name, pt, res, want_new)

    @rule(target=hwpts, d=st.data(), pt=PT_REF)
    def attach(self, d, pt):
        return self._attach_rule(self.pick_device(d, self.shadow.dev_id), pt)

    def _attach_rule(self, name, pt):
        self._attach("attach" if name not in self.shadow.dev_pt else "replace", name, pt)
        got = self.shadow.dev_pt.get(name)
        return got if got is not None else multiple()

    @precondition(lambda self: self.shadow.dev_pt)
    @rule(data=st.data(), pt=st.one_of(ioases, hwpts))
    def replace(self, data, pt):
        """ATTACH on an attached device: iommufd_device_replace."""
        name = data.draw(st.sampled_from(sorted(self.shadow.dev_pt)))
        self._attach("replace", name, pt)

    @rule(d=st.data())
    def detach(self, d):
        self._detach(self.pick_device(d, self.shadow.dev_pt))

    def _detach(self, name):
        sh = self.shadow
        cdev = self.cdev(name)
        res = self.call("detach", cdev.detach)
        if name not in sh.dev_id:
            self.expect(res, errno.EINVAL)
            return
        self.expect(res, None)                    # detach cannot fail (not attached: a no-op)
        sh.dev_pt.pop(name, None)
        sh.prune_autos()

    def close_all(self):
        if self.close_ifd_first:
            ctx = self.ctx
            self.ifd.close()
            if self.shadow.dev_id:     # bound devices hold the ctx (iommufd_device_bind)
                assert list(self.host.ctxs.values()) == [ctx]
        for name in list(self.cdevs):
            self.cdevs.pop(name).close()
        self.ifd.close()


class GroupMachine(IommufdMachine):
    """6.2-6.5: devices reach iommufd through a VFIO group whose container is the iommufd
    (runner.Vmm's group path): IOMMU_VFIO_IOAS SET picks the compat IOAS, GET_DEVICE_FD
    binds the device and attaches it there (auto-domain), closing the device fd detaches
    and unbinds it."""

    profile = "linux-6.2"

    def __init__(self):
        super().__init__()
        self.groups: dict[str, VfioGroup] = {}
        self.devfds: dict[str, int] = {}

    @initialize(target=ioases, pages=st.lists(st.integers(0, 63), max_size=3), ifd_first=st.booleans(),
                opened=st.lists(st.sampled_from(DEVICES), unique=True, min_size=1))
    def baseline(self, pages, ifd_first, opened):
        """An IOAS with a few areas as the compat IOAS, some devices opened (bound and attached)."""
        ioas = self.first_ioas(pages, ifd_first)
        self.vfio_ioas_set(ioas)
        for n in opened:
            self._get_device_fd(n, True)
        return ioas

    @rule(g=st.sampled_from(GROUPS))
    def open_group(self, g):
        name = next(n for n in DEVICES if GROUP_OF[n] == g)
        res = self.call("open_group", lambda: VfioGroup(self.t, self.emu.group_path(name)))
        if g in self.groups:
            self.expect(res, errno.EBUSY)
        else:
            assert not isinstance(res, Failed)
            self.groups[g] = res

    @precondition(lambda self: self.groups)
    @rule(data=st.data())
    def set_container(self, data):
        self._set_container(data.draw(st.sampled_from(sorted(self.groups))))

    def _set_container(self, g):
        sh = self.shadow
        already = self.host.files[self.groups[g].fd].ctx_fd is not None
        want = sh.next_id()
        res = self.call("set_container", lambda: self.groups[g].set_container(self.ifd))
        if already:
            self.expect(res, errno.EINVAL)
            return
        self.expect(res, None)
        if sh.compat is None:        # 6.2.1 iommufd_vfio_compat_ioas_id creates the compat IOAS
            sh.add(want, "ioas")
            sh.compat = want
            assert self.call("vfio_ioas_get", lambda: self.ifd.vfio_ioas(uapi.IOMMU_VFIO_IOAS_GET)) == want

    @rule(ioas=IOAS_REF)
    def vfio_ioas_set(self, ioas):
        res = self.call("vfio_ioas_set", lambda: self.ifd.vfio_ioas(uapi.IOMMU_VFIO_IOAS_SET, ioas))
        if self.shadow.kind.get(ioas) != "ioas":
            self.expect(res, errno.ENOENT)
        else:
            self.expect(res, None)
            self.shadow.compat = ioas

    @rule(op=st.sampled_from(["get", "clear", "bad"]))
    def vfio_ioas_other(self, op):
        code = {"get": uapi.IOMMU_VFIO_IOAS_GET, "clear": uapi.IOMMU_VFIO_IOAS_CLEAR, "bad": 7}[op]
        res = self.call("vfio_ioas_" + op, lambda: self.ifd.vfio_ioas(code))
        if op == "bad":
            self.expect(res, errno.EOPNOTSUPP)
        elif op == "clear":
            self.expect(res, None)
            self.shadow.compat = None
        elif self.shadow.compat is None:
            self.expect(res, errno.ENODEV)
        else:
            assert res == self.shadow.compat

    @rule(target=hwpts, d=st.data(), prepare=st.sampled_from([True, True, True, False]))
    def get_device_fd(self, d, prepare):
        return self._get_device_fd(self.pick_device(d, [n for n in DEVICES if n not in self.devfds]), prepare)

    def _get_device_fd(self, name, prepare):
        """VFIO_GROUP_GET_DEVICE_FD: bind + attach to the compat IOAS in one call.  With
        ``prepare`` the group is first opened and given the iommufd as its container, as
        runner.Vmm does."""
        group = GROUP_OF[name]
        if prepare and group not in self.groups:
            self.open_group(group)
        if prepare and group in self.groups and self.host.files[self.groups[group].fd].ctx_fd is None:
            self._set_container(group)
        g = self.groups.get(group)
        if g is None:
            return multiple()
        sh = self.shadow
        want_dev = sh.next_id()
        want_hwpt = lowest_free(set(sh.kind) | {want_dev})
        container = self.host.files[g.fd].ctx_fd is not None
        res = self.call("get_device_fd", lambda: g.get_device_fd(name), may_upgrade=True)
        if not container:
            self.expect(res, errno.EINVAL)
        elif name in self.devfds:
            self.expect(res, errno.EBUSY)
        elif sh.compat is None:
            self.expect(res, errno.ENODEV)
        if isinstance(res, Failed):
            return multiple()
        self.devfds[name] = res
        dev = self.host.devices[name]
        assert dev.idev_id == want_dev, f"device got id {dev.idev_id}, the lowest free is {want_dev}"
        sh.add(want_dev, "device")
        sh.dev_id[name] = want_dev
        got = self.ctx.objects[want_dev].igroup.hwpt.id
        self.record_attach(name, sh.compat, got, want_hwpt)
        return got

    @precondition(lambda self: self.devfds)
    @rule(data=st.data())
    def close_device(self, data):
        name = data.draw(st.sampled_from(sorted(self.devfds)))
        fd = self.devfds.pop(name)
        self.call("close_device", lambda: self.t.close(fd))
        sh = self.shadow
        sh.destroy(sh.dev_id.pop(name))
        sh.dev_pt.pop(name, None)
        sh.prune_autos()

    @precondition(lambda self: self.groups)
    @rule(data=st.data())
    def close_group(self, data):
        # Only groups with no open device: device fds hold the group file in Linux, which the
        # emulator does not model (a closed-and-reopened group would lose its container).
        free = sorted(g for g in self.groups if not any(GROUP_OF[n] == g for n in self.devfds))
        if not free:
            return
        g = data.draw(st.sampled_from(free))
        self.call("close_group", self.groups.pop(g).close)

    @rule(name=st.sampled_from(DEVICES))
    def cdev_attach_on_device_fd(self, name):
        """The 6.6 ATTACH ioctl on a group-obtained device fd: vfio-pci of 6.2 does not know it."""
        fd = self.devfds.get(name)
        if fd is None:
            return
        cmd = uapi.vfio_device_attach_iommufd_pt(argsz=12, pt_id=self.shadow.compat or 0)
        res = self.call("cdev_attach", lambda: self.t.ioctl(fd, uapi.VFIO_DEVICE_ATTACH_IOMMUFD_PT, cmd))
        self.expect(res, errno.ENOTTY)

    def close_all(self):
        if self.close_ifd_first:
            self.ifd.close()
        for name in list(self.devfds):
            self.t.close(self.devfds.pop(name))
        for g in list(self.groups):
            self.groups.pop(g).close()
        self.ifd.close()


class Linux62(GroupMachine):
    profile = "linux-6.2"
    stats = Counter()


class Linux66(CdevMachine):
    profile = "linux-6.6"
    stats = Counter()


class Linux612(CdevMachine):
    profile = "linux-6.12"
    stats = Counter()


# "Sometimes" properties (Stateright): the run was not vacuous.  Hypothesis' swarm testing makes
# per-run counts clumpy, so the random run only checks what every run reaches many times over;
# the fuller list is checked on a fixed-seed run (derandomize: the same sequences every time, so
# it cannot flake; a change to the strategies or the model that loses an outcome fails it loudly).
# Rarer outcomes (the CC upgrade kept after a failed attach, EADDRINUSE) have targeted tests in
# test_atomicity.py and below.
ALWAYS = {
    "linux-6.2": {("ioas_alloc", "ok"), ("map", "ok"), ("get_device_fd", "ok"), ("set_container", "ok")},
    "linux-6.6": {("ioas_alloc", "ok"), ("map", "ok"), ("bind", "ok"), ("attach", "ok"), ("detach", "ok")},
    "linux-6.12": {("ioas_alloc", "ok"), ("map", "ok"), ("bind", "ok"), ("attach", "ok"), ("detach", "ok")},
}
SOMETIMES_COMMON = {("ioas_alloc", "ok"), ("map", "ok"), ("map", "EEXIST"), ("map", "ENOENT"), ("unmap", "ok"),
                    ("unmap", "ENOENT"), ("unmap", "EINVAL"), ("destroy", "ok"), ("destroy", "ENOENT"),
                    ("destroy", "EBUSY")}
SOMETIMES_CDEV = SOMETIMES_COMMON | {("bind", "ok"), ("attach", "ok"), ("attach", "EINVAL"), ("replace", "ok"),
                                     ("detach", "ok"), ("hw_info", "ok"), ("hwpt_alloc", "ok"),
                                     ("hwpt_alloc", "EOPNOTSUPP")}
SOMETIMES = {
    "linux-6.2": SOMETIMES_COMMON | {("get_device_fd", "ok"), ("get_device_fd", "EBUSY"), ("set_container", "ok"),
                                     ("open_group", "EBUSY"), ("close_device", "ok"), ("hwpt_alloc", "ENOTTY"),
                                     ("vfio_ioas_set", "ok")},
    "linux-6.6": SOMETIMES_CDEV | {("hwpt_alloc", "E2BIG")},
    "linux-6.12": SOMETIMES_CDEV | {("hwpt_alloc", "EINVAL"), ("map", "EINVAL")},
}
FIXED_SEED = settings(SETTINGS, derandomize=True, max_examples=60)
MACHINES = [Linux62, Linux66, Linux612]


@pytest.mark.parametrize("machine", MACHINES, ids=lambda m: m.profile)
def test_random_op_sequences_keep_invariants(machine):
    machine.stats.clear()
    run_state_machine_as_test(machine, settings=SETTINGS)
    missing = ALWAYS[machine.profile] - set(machine.stats)
    assert not missing, f"never reached: {sorted(missing)}"


@pytest.mark.parametrize("machine", MACHINES, ids=lambda m: m.profile)
def test_fixed_seed_run_reaches_the_interesting_outcomes(machine):
    machine.stats.clear()
    run_state_machine_as_test(machine, settings=FIXED_SEED)
    missing = SOMETIMES[machine.profile] - set(machine.stats)
    assert not missing, f"never reached: {sorted(missing)}; reached: {sorted(machine.stats)}"


# -- the helpers themselves -----------------------------------------------------------------------
def test_cc_mask_accepts_only_upgrades():
    """The E2 exception is real: a CC device's attach to a user HWPT upgrades it, then fails
    on the MSI window (EADDRINUSE); the upgrade stays (6.6.0 iommufd_hw_pagetable_attach)."""
    emu = emulated(SYSTEM, "linux-6.6")
    ifd = Iommufd(emu.transport)
    ioas = ifd.ioas_alloc()
    gpu, nic = VfioDevice(emu.transport, emu.cdev_path("gpu")), VfioDevice(emu.transport, emu.cdev_path("nic"))
    gpu_id, nic_id = gpu.bind(ifd), nic.bind(ifd)
    hwpt = ifd.hwpt_alloc(gpu_id, ioas.id)          # non-CC: allocated for the non-SC gpu
    ioas.map(MSI_START, PAGE)                        # the MSI window is not reserved yet
    before = emu.host.snapshot()
    with pytest.raises(OSError) as e:
        nic.attach(hwpt)
    assert e.value.errno == errno.EADDRINUSE
    after = emu.host.snapshot()
    assert after != before and emu.host.ctxs[ifd.fd].objects[hwpt].enforce_cc
    check_only_upgraded(before, after)
    with pytest.raises(AssertionError):
        check_only_upgraded(after, before)


def test_unmap_mask_accepts_only_lost_areas():
    emu = emulated(SYSTEM, "linux-6.12")
    ifd = Iommufd(emu.transport)
    ioas = ifd.ioas_alloc()
    nic = VfioDevice(emu.transport, emu.cdev_path("nic"))
    nic.bind(ifd)
    nic.attach(ioas.id)
    ioas.map(0x100000, PAGE)
    ioas.map(0x102000, 2 * PAGE)
    before = emu.host.snapshot()
    with pytest.raises(OSError) as e:
        ioas.unmap(0x100000, 3 * PAGE)               # first area whole, the second cut
    assert e.value.errno == errno.ENOENT
    after = emu.host.snapshot()
    assert after != before
    check_lost_whole_areas(before, after, ioas.id)
    with pytest.raises(AssertionError):
        check_lost_whole_areas(after, before, ioas.id)
