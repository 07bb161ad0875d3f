"""Every failed call leaves the model exactly as it was (DESIGN.md "Tests and benchmarks").

* The fail-nth sweep, after tools/testing/selftests/iommu/iommufd_fail_nth.c: a sequence of
  client calls is run with ``Host.fail_nth = 1, 2, 3, ...`` until it succeeds without
  reaching N.  Every injected failure must come back as the site's errno (ENOMEM for an
  allocation, EFAULT for pfn_reader_user_pin's iommufd_should_fail) with ``Host.snapshot()``
  unchanged; retrying without fail-nth must then give what a clean run gives -- ids
  included (an aborted object gives its id back) -- and closing everything must drain the
  host.  Two flavours: only the sequence's final call under fail-nth, and the whole sequence.
* Direct errno tests: every errno path of each ioctl family that the client (or a raw
  buffer through ``Emulated.transport.ioctl``) can reach leaves the snapshot unchanged.
"""
from __future__ import annotations

import errno as _errno

INJECTED = (_errno.ENOMEM, _errno.EFAULT)   # what Host.fallible sites return

import ctypes
import errno

import pytest

from conftest import MIXED_SYSTEM

from pyiommufd import uapi
from pyiommufd.client import U64_MAX, Iommufd, Ioas, VfioDevice, VfioGroup, emulated

PAGE = 0x1000
MSI = 0xFEE00000
NEST, DIRTY = uapi.IOMMU_HWPT_ALLOC_NEST_PARENT, uapi.IOMMU_HWPT_ALLOC_DIRTY_TRACKING
VTD_S1 = bytes(uapi.iommu_hwpt_vtd_s1(pgtbl_addr=0x1000, addr_width=48))

SYSTEM = MIXED_SYSTEM   # nic (SC, nesting, dirty tracking), gpu (no SC), ssd0/ssd1 in one group
CDEV_PROFILES = ["linux-6.6", "linux-6.12"]


class Env:
    """One VMM on one emulated machine: the iommufd, named IOASes / HWPTs, device handles."""

    def __init__(self, profile: str):
        self.emu = emulated(SYSTEM, profile)
        self.host = self.emu.host
        self.t = self.emu.transport
        self.ifd = Iommufd(self.t)
        self.uva = self.t.mmap(1 << 32)   # every length mapped here: a domain pins the pages (EFAULT past the buffer)
        self.ids: dict[str, int] = {}
        self.cdevs: dict[str, VfioDevice] = {}
        self.groups: dict[str, VfioGroup] = {}
        self.devfds: dict[str, int] = {}
        # The VMM opens its VFIO files up front: opening is not part of any call under test.
        for d in SYSTEM.devices:
            if self.emu.profile.vfio_cdev:
                self.cdev(d.name)
            else:
                self.group(d.name)

    @property
    def ctx(self):
        return self.host.ctxs[self.ifd.fd]

    def ioas(self, name: str) -> Ioas:
        return Ioas(self.ifd, self.ids[name])

    # the steps sequences are made of; each returns what the client returned
    def ioas_alloc(self, name: str) -> int:
        self.ids[name] = self.ifd.ioas_alloc().id
        return self.ids[name]

    def map(self, name: str, iova: int | None, length: int) -> int:
        return self.ioas(name).map(iova, length, user_va=self.uva)

    def cdev(self, dev: str) -> VfioDevice:
        if dev not in self.cdevs:
            self.cdevs[dev] = VfioDevice(self.t, self.emu.cdev_path(dev))
        return self.cdevs[dev]

    def bind(self, dev: str) -> int:
        self.ids[dev] = self.cdev(dev).bind(self.ifd)
        return self.ids[dev]

    def attach(self, dev: str, pt: str, as_: str | None = None) -> int:
        got = self.cdev(dev).attach(self.ids[pt])
        if as_:
            self.ids[as_] = got
        return got

    def hwpt_alloc(self, dev: str, pt: str, as_: str, flags: int = 0, data: bytes | None = None) -> int:
        dtype = uapi.IOMMU_HWPT_DATA_VTD_S1 if data else 0
        self.ids[as_] = self.ifd.hwpt_alloc(self.ids[dev], self.ids[pt], flags, dtype, data)
        return self.ids[as_]

    def group(self, dev: str) -> VfioGroup:
        g = self.host.devices[dev].group
        if g not in self.groups:
            self.groups[g] = VfioGroup(self.t, self.emu.group_path(dev))
        return self.groups[g]

    def set_container(self, dev: str) -> int:
        self.group(dev).set_container(self.ifd)
        self.ids["compat"] = self.ifd.vfio_ioas(uapi.IOMMU_VFIO_IOAS_GET)
        return self.ids["compat"]

    def get_device_fd(self, dev: str) -> tuple[int, int, int]:
        """Returns (fd, device id, HWPT id): what GET_DEVICE_FD did, as the model records it."""
        fd = self.group(dev).get_device_fd(dev)
        self.devfds[dev] = fd
        d = self.host.devices[dev]
        return fd, d.idev_id, self.ctx.objects[d.idev_id].igroup.hwpt.id

    def drain(self) -> None:
        """Close everything; the host must be left with nothing (iommufd_fops_release)."""
        for dev in list(self.devfds):
            self.t.close(self.devfds.pop(dev))
        for dev in list(self.cdevs):
            self.cdevs.pop(dev).close()
        for g in list(self.groups):
            self.groups.pop(g).close()
        self.ifd.close()
        assert not self.host.ctxs and not self.host.files
        for g in self.host.groups.values():
            assert g.domain is None and g.owner is None and not g.owner_cnt
        for d in self.host.devices.values():
            assert d.ctx_fd is None and d.idev_id is None and not d.attached and d.open_via is None


def canonical(host):
    """host.snapshot() with domain serials renumbered 1..n in serial order: a failed attempt may
    have burned serials (the model's stand-in for kernel pointers), which is unobservable."""
    h = host.clone()
    doms = {}

    def add(d):
        if d is not None:
            doms[id(d)] = d
            add(getattr(d, "parent", None))
    for ctx in h.ctxs.values():
        for o in ctx.objects.values():
            add(getattr(o, "domain", None))
            iopt = getattr(getattr(o, "iopt", None), "domains", ())
            for d in iopt:
                add(d)
    for g in h.groups.values():
        add(g.domain)
    renumber = {d.serial: i + 1 for i, d in enumerate(sorted(doms.values(), key=lambda d: d.serial))}
    for d in doms.values():
        d.serial = renumber[d.serial]
    for ctx in h.ctxs.values():   # io_pagetable aperture reservations name their domain by serial
        for o in ctx.objects.values():
            iopt = getattr(o, "iopt", None)
            if iopt is not None and hasattr(iopt, "outside"):
                iopt.outside = [(s, l, renumber.get(x, x)) for s, l, x in iopt.outside]
    return h.snapshot()


# -- the fail-nth sweep ------------------------------------------------------------------------
def run_steps(env, steps):
    return [step(env) for step in steps]


def sweep_final_call(profile, setup, final, min_points: int) -> int:
    """Fail the Nth fallible step of ``final`` for N = 1, 2, ...; returns how many there were."""
    clean_env = Env(profile)
    run_steps(clean_env, setup)
    clean = final(clean_env)
    clean_state = canonical(clean_env.host)
    clean_env.drain()
    n = 1
    while True:
        env = Env(profile)
        run_steps(env, setup)
        host = env.host
        before = host.snapshot()
        host.fallible_count, host.fail_nth = 0, n
        try:
            got = final(env)
        except OSError as e:
            host.fail_nth = 0
            assert e.errno in INJECTED and "fail-nth" in str(e), f"fail_nth={n}: {e}"
            assert host.fallible_count == n
            assert host.snapshot() == before, f"fail_nth={n}: {e} changed the state"
            got = final(env)       # the retry
        else:
            host.fail_nth = 0
            assert host.fallible_count < n
        assert got == clean, f"fail_nth={n}: got {got}, a clean run gives {clean}"
        assert canonical(host) == clean_state, f"fail_nth={n}: state differs from a clean run"
        env.drain()
        if host.fallible_count < n and not isinstance(got, BaseException):
            break
        n += 1
    points = n - 1
    assert points >= min_points, f"only {points} fallible points in the final call"
    return points


def sweep_sequence(profile, steps, min_points: int) -> int:
    """iommufd_fail_nth proper: fail the Nth fallible step anywhere in the sequence.  The
    failing call must leave the state untouched; retrying it and going on must end where a
    clean run ends."""
    clean_env = Env(profile)
    clean = run_steps(clean_env, steps)
    clean_state = canonical(clean_env.host)
    clean_env.drain()
    n = 1
    while True:
        env = Env(profile)
        host = env.host
        host.fallible_count, host.fail_nth = 0, n
        results, failed = [], False
        for step in steps:
            before = host.snapshot()
            try:
                results.append(step(env))
            except OSError as e:
                assert not failed and e.errno in INJECTED and host.fallible_count == n, f"fail_nth={n}: {e}"
                assert host.snapshot() == before, f"fail_nth={n}: {e} changed the state"
                failed, host.fail_nth = True, 0
                results.append(step(env))
        host.fail_nth = 0
        assert results == clean, f"fail_nth={n}: results {results}, clean {clean}"
        assert canonical(host) == clean_state, f"fail_nth={n}: state differs from a clean run"
        env.drain()
        if not failed:
            break
        n += 1
    assert n - 1 >= min_points
    return n - 1


def _s(method, *args, **kw):
    return lambda env: getattr(env, method)(*args, **kw)


MAPPED_IOAS = [_s("ioas_alloc", "A"), _s("map", "A", 0x100000, 2 * PAGE), _s("map", "A", None, PAGE)]
TWO_IOAS = MAPPED_IOAS + [_s("ioas_alloc", "B"), _s("map", "B", 0x400000, PAGE)]

# name -> (setup, final call, fallible points at least)
CDEV_SEQUENCES = {
    "bind": (MAPPED_IOAS, _s("bind", "nic"), 1),
    # object alloc, domain alloc, reserved regions of the device
    "attach-new-auto-domain": (MAPPED_IOAS + [_s("bind", "nic")], _s("attach", "nic", "A"), 3),
    # the walk first tries nic's CC domain (reserved regions run before the driver refuses)
    "attach-second-auto-domain": (MAPPED_IOAS + [_s("bind", "nic"), _s("attach", "nic", "A"), _s("bind", "gpu")],
                                  _s("attach", "gpu", "A"), 4),
    "attach-joins-group": (MAPPED_IOAS + [_s("bind", "ssd0"), _s("bind", "ssd1"), _s("attach", "ssd0", "A")],
                           _s("attach", "ssd1", "A"), 1),
    "hwpt-alloc": (MAPPED_IOAS + [_s("bind", "nic")], _s("hwpt_alloc", "nic", "A", "H"), 2),
    "attach-user-hwpt": (MAPPED_IOAS + [_s("bind", "gpu"), _s("hwpt_alloc", "gpu", "A", "H")],
                         _s("attach", "gpu", "H"), 1),
    "map-with-domains": (MAPPED_IOAS + [_s("bind", "nic"), _s("attach", "nic", "A"), _s("bind", "gpu"),
                                        _s("attach", "gpu", "A")], _s("map", "A", 0x200000, 4 * PAGE), 1),
    "map-auto-iova-with-domains": (MAPPED_IOAS + [_s("bind", "nic"), _s("attach", "nic", "A")],
                                   _s("map", "A", None, 3 * PAGE), 1),
    # replace of a two-device group to another IOAS: a new auto domain, reserved regions for both
    "replace-to-other-ioas": (TWO_IOAS + [_s("bind", "ssd0"), _s("bind", "ssd1"), _s("attach", "ssd0", "A"),
                                          _s("attach", "ssd1", "A")], _s("attach", "ssd0", "B"), 4),
    "replace-to-existing-auto": (TWO_IOAS + [_s("bind", "nic"), _s("attach", "nic", "B"), _s("bind", "ssd0"),
                                             _s("attach", "ssd0", "A")], _s("attach", "ssd0", "B"), 1),
    "replace-to-user-hwpt": (TWO_IOAS + [_s("bind", "ssd0"), _s("bind", "ssd1"), _s("attach", "ssd0", "A"),
                                         _s("attach", "ssd1", "A"), _s("hwpt_alloc", "ssd0", "B", "H")],
                             _s("attach", "ssd0", "H"), 2),
    "ioas-alloc": ([], _s("ioas_alloc", "A"), 1),
}
NESTED_SEQUENCES = {
    "hwpt-alloc-nest-parent": (MAPPED_IOAS + [_s("bind", "nic")], _s("hwpt_alloc", "nic", "A", "P", NEST | DIRTY), 2),
    "hwpt-alloc-nested": (MAPPED_IOAS + [_s("bind", "nic"), _s("hwpt_alloc", "nic", "A", "P", NEST)],
                          _s("hwpt_alloc", "nic", "P", "N", 0, VTD_S1), 2),
    "attach-nested": (MAPPED_IOAS + [_s("bind", "nic"), _s("hwpt_alloc", "nic", "A", "P", NEST),
                                     _s("hwpt_alloc", "nic", "P", "N", 0, VTD_S1)], _s("attach", "nic", "N"), 0),
}
GROUP_SETUP = [_s("set_container", "nic"), _s("map", "compat", 0x100000, 2 * PAGE)]
GROUP_SEQUENCES = {
    # 6.2.1 vfio_group_ioctl_set_container -> iommufd_vfio_compat_ioas_id: the compat IOAS
    "set-container": ([], _s("set_container", "nic"), 1),
    # bind (object alloc) + attach to the compat IOAS (object alloc, domain alloc, reserved regions)
    "get-device-fd-first": (GROUP_SETUP, _s("get_device_fd", "nic"), 4),
    "get-device-fd-second-domain": (GROUP_SETUP + [_s("get_device_fd", "nic"), _s("set_container", "gpu")],
                                    _s("get_device_fd", "gpu"), 5),
    "get-device-fd-joins-group": (GROUP_SETUP + [_s("set_container", "ssd0"), _s("get_device_fd", "ssd0")],
                                  _s("get_device_fd", "ssd1"), 2),
}


@pytest.mark.parametrize("profile", CDEV_PROFILES)
@pytest.mark.parametrize("name", sorted(CDEV_SEQUENCES))
def test_fail_nth_final_call_cdev(profile, name):
    setup, final, k = CDEV_SEQUENCES[name]
    sweep_final_call(profile, setup, final, k)


@pytest.mark.parametrize("name", sorted(NESTED_SEQUENCES))
def test_fail_nth_final_call_nested(name):
    setup, final, k = NESTED_SEQUENCES[name]
    sweep_final_call("linux-6.12", setup, final, k)


@pytest.mark.parametrize("name", sorted(GROUP_SEQUENCES))
def test_fail_nth_final_call_group_path(name):
    setup, final, k = GROUP_SEQUENCES[name]
    sweep_final_call("linux-6.2", setup, final, k)


@pytest.mark.parametrize("profile,name", [(p, n) for p in CDEV_PROFILES for n in
                                          ("replace-to-other-ioas", "replace-to-user-hwpt", "map-with-domains")]
                         + [("linux-6.12", "attach-nested"), ("linux-6.2", "get-device-fd-second-domain")])
def test_fail_nth_whole_sequence(profile, name):
    setup, final, _ = {**CDEV_SEQUENCES, **NESTED_SEQUENCES, **GROUP_SEQUENCES}[name]
    sweep_sequence(profile, setup + [final], min_points=len(setup))


@pytest.mark.parametrize("profile", ["linux-6.6", "ablation-intel-no-sc-checks"])
def test_fail_nth_after_a_cc_upgrade_keeps_the_upgrade(profile):
    """The one documented exception (6.6.0 iommufd_hw_pagetable_attach): a CC-capable device's
    attach upgrades a non-CC HWPT before the reserved regions; a failure there (here injected)
    does not undo the upgrade.  Everything else is as before."""
    env = Env(profile)
    for step in MAPPED_IOAS + [_s("bind", "gpu"), _s("hwpt_alloc", "gpu", "A", "H"), _s("bind", "nic")]:
        step(env)
    fd = env.ifd.fd
    before = env.host.clone()
    env.host.fallible_count, env.host.fail_nth = 0, 1      # the nic's reserved regions
    with pytest.raises(OSError) as e:
        env.attach("nic", "H")
    env.host.fail_nth = 0
    assert e.value.errno == errno.ENOMEM
    assert env.host.snapshot() != before.snapshot()
    after = env.host.clone()
    h = after.ctxs[fd].objects[env.ids["H"]]
    assert h.enforce_cc and h.domain.enforce_cc                # the upgrade stayed ...
    h.enforce_cc = h.domain.enforce_cc = h.domain.set_pte_snp = False
    h.domain.upgraded_over = ()
    assert after.snapshot() == before.snapshot()               # ... and it is the only change
    env.attach("nic", "H")
    env.drain()


def test_fail_nth_counts_are_per_call():
    """The hook itself: fallible_count counts every fallible step; fail_nth 0 never fails."""
    env = Env("linux-6.12")
    env.host.fallible_count = 0
    env.ioas_alloc("A")
    assert env.host.fallible_count == 1   # the object alloc
    env.bind("nic")
    assert env.host.fallible_count == 2
    env.attach("nic", "A")
    assert env.host.fallible_count >= 5   # object + domain alloc + reserved regions, at least
    env.drain()


# -- direct errno tests ---------------------------------------------------------------------------
def cdev_fixture(profile: str) -> Env:
    """A busy machine: A (mapped, nic + ssd0 + gpu attached), B (empty, user HWPT U of the gpu
    ... on 6.6+), M (an area over the MSI window), Z (an unaligned area, no domain yet)."""
    env = Env(profile)
    env.ioas_alloc("A")
    env.map("A", 0x100000, 2 * PAGE)
    env.map("A", 0x200000, PAGE)
    for d in ("nic", "gpu", "ssd0", "ssd1"):
        env.bind(d)
    env.attach("nic", "A", as_="auto-nic")
    env.attach("gpu", "A", as_="auto-gpu")
    env.attach("ssd0", "A", as_="auto-ssd0")
    env.ioas_alloc("B")
    env.hwpt_alloc("gpu", "B", "U")          # non-CC (the gpu is not CC-capable)
    env.hwpt_alloc("nic", "B", "UCC")        # CC (allocated for the nic)
    env.ioas_alloc("M")
    env.map("M", MSI, PAGE)
    env.ioas_alloc("Z")
    env.map("Z", 0x300000 + 0x800, 0x800)    # fine without a domain; EADDRINUSE once one comes
    return env


def group_fixture(profile: str = "linux-6.2") -> Env:
    env = Env(profile)
    env.set_container("nic")
    env.map("compat", 0x100000, 2 * PAGE)
    env.get_device_fd("nic")
    env.set_container("gpu")
    env.get_device_fd("gpu")
    env.set_container("ssd0")
    env.get_device_fd("ssd0")
    env.ioas_alloc("M")
    env.map("M", MSI, PAGE)
    env.ioas_alloc("E")
    return env


def raw(cls, size: int | None = None, tail: bytes = b"", **fields) -> bytearray:
    """The struct as bytes, its size field set to ``size`` (default: all of it, tail included)."""
    s = cls(**fields)
    buf = bytearray(bytes(s) + tail)
    n = len(buf) if size is None else size
    if hasattr(cls, "size"):
        s.size = n
    else:
        s.argsz = n
    buf[:ctypes.sizeof(cls)] = bytes(s)
    return buf


def ioctl_ifd(request, buf):
    return lambda env: env.t.ioctl(env.ifd.fd, request, buf)


def ioctl_cdev(dev, request, buf):
    return lambda env: env.t.ioctl(env.cdev(dev).fd, request, buf)


def _hwpt(dev, pt, flags=0, dtype=0, data=None):
    return lambda env: env.ifd.hwpt_alloc(env.ids.get(dev, dev) if isinstance(dev, str) else dev,
                                          env.ids.get(pt, pt) if isinstance(pt, str) else pt, flags, dtype, data)


def _map(ioas, iova, length, **kw):
    return lambda env: Ioas(env.ifd, env.ids.get(ioas, ioas) if isinstance(ioas, str) else ioas).map(
        iova, length, user_va=env.uva, **kw)


def _unmap(ioas, iova, length):
    return lambda env: Ioas(env.ifd, env.ids.get(ioas, ioas) if isinstance(ioas, str) else ioas).unmap(iova, length)


def _destroy(obj):
    return lambda env: env.ifd.destroy(env.ids.get(obj, obj) if isinstance(obj, str) else obj)


def _attach(dev, pt):
    return lambda env: env.cdev(dev).attach(env.ids.get(pt, pt) if isinstance(pt, str) else pt)


def _second_cdev_attach(dev, pt):
    """A second open of the device's cdev, never bound: ATTACH needs access_granted."""
    def call(env):
        fd = env.t.open(env.emu.cdev_path(dev))
        try:
            return env.t.ioctl(fd, uapi.VFIO_DEVICE_ATTACH_IOMMUFD_PT, raw(uapi.vfio_device_attach_iommufd_pt,
                                                                            pt_id=env.ids[pt]))
        finally:
            env.t.close(fd)
    return call


def _bind_with(dev, iommufd, fresh_fd=False):
    """BIND on the device's cdev fd, or on a second, unbound open of the same cdev (closed again:
    the open/close pair is no state change)."""
    def call(env):
        fd = env.t.open(env.emu.cdev_path(dev)) if fresh_fd else env.cdev(dev).fd
        try:
            return env.t.ioctl(fd, uapi.VFIO_DEVICE_BIND_IOMMUFD, raw(uapi.vfio_device_bind_iommufd,
                                                                    iommufd=iommufd(env)))
        finally:
            if fresh_fd:
                env.t.close(fd)
    return call


def _hw_info(dev, **fields):
    def call(env):
        fields.setdefault("data_len", 24)
        fields.setdefault("data_uptr", env.uva)
        return env.t.ioctl(env.ifd.fd, uapi.IOMMU_GET_HW_INFO,
                           raw(uapi.iommu_hw_info, dev_id=env.ids.get(dev, 0) if isinstance(dev, str) else dev,
                               **fields))
    return call


E = errno
# (case, call, {profile: errno}) -- a profile missing from the dict does not run the case.
def both(err):
    return {p: err for p in CDEV_PROFILES}


CDEV_CASES = [
    # IOMMU_DESTROY
    ("destroy-unknown", _destroy(999), both(E.ENOENT)),
    ("destroy-zero", _destroy(0), both(E.ENOENT)),
    ("destroy-device", _destroy("nic"), both(E.EBUSY)),
    ("destroy-ioas-with-hwpts", _destroy("A"), both(E.EBUSY)),
    ("destroy-auto-hwpt", _destroy("auto-nic"), both(E.EBUSY)),
    ("destroy-ioas-with-user-hwpt", _destroy("B"), both(E.EBUSY)),
    # IOMMU_IOAS_ALLOC
    ("ioas-alloc-flags", ioctl_ifd(uapi.IOMMU_IOAS_ALLOC, raw(uapi.iommu_ioas_alloc, flags=1)), both(E.EOPNOTSUPP)),
    # IOMMU_IOAS_MAP
    ("map-overlap", _map("A", 0x100000 + PAGE, 2 * PAGE), both(E.EEXIST)),
    ("map-same", _map("A", 0x200000, PAGE), both(E.EEXIST)),
    ("map-msi-window", _map("A", MSI + PAGE, PAGE), both(E.EINVAL)),
    ("map-length-0", _map("A", 0x500000, 0), both(E.EINVAL)),
    ("map-auto-length-0", _map("A", None, 0), both(E.EINVAL)),
    ("map-unaligned-iova", _map("A", 0x500800, PAGE), both(E.EINVAL)),
    ("map-unaligned-length", _map("A", 0x500000, 0x800), both(E.EINVAL)),
    ("map-iova-max", _map("A", U64_MAX, PAGE), both(E.EOVERFLOW)),
    ("map-length-max", _map("A", 0x500000, U64_MAX), both(E.EOVERFLOW)),
    ("map-wraps", _map("A", U64_MAX - PAGE + 1, 2 * PAGE), both(E.EOVERFLOW)),
    ("map-auto-huge", _map("A", None, 1 << 63), both(E.EOVERFLOW)),
    ("map-unknown-flag", _map("A", 0x500000, PAGE, flags=1 << 5), both(E.EOPNOTSUPP)),
    ("map-reserved-field", ioctl_ifd(uapi.IOMMU_IOAS_MAP, raw(uapi.iommu_ioas_map, flags=7, ioas_id=1, length=PAGE,
                                                              iova=0x500000, user_va=0x7F0000000000,
                                                              **{"__reserved": 1})), both(E.EOPNOTSUPP)),
    ("map-unknown-ioas", _map(999, 0x500000, PAGE), both(E.ENOENT)),
    ("map-into-hwpt-id", _map("auto-nic", 0x500000, PAGE), both(E.ENOENT)),
    ("map-no-prot", _map("A", 0x500000, PAGE, readable=False, writeable=False), {"linux-6.12": E.EINVAL}),
    # IOMMU_IOAS_UNMAP
    ("unmap-cuts-area", _unmap("A", 0x100000 + PAGE, PAGE), both(E.ENOENT)),
    ("unmap-cuts-area-start", _unmap("A", 0x100000, PAGE), both(E.ENOENT)),
    ("unmap-nothing-there", _unmap("A", 0x600000, PAGE), both(E.ENOENT)),
    ("unmap-length-0", _unmap("A", 0x100000, 0), both(E.EINVAL)),
    ("unmap-length-max", _unmap("A", 0x100000, U64_MAX), both(E.EOVERFLOW)),
    ("unmap-wraps", _unmap("A", U64_MAX - PAGE, 4 * PAGE), both(E.EOVERFLOW)),
    ("unmap-unknown-ioas", _unmap(999, 0, U64_MAX), both(E.ENOENT)),
    # IOMMU_HWPT_ALLOC
    ("hwpt-unknown-dev", _hwpt(999, "A"), both(E.ENOENT)),
    ("hwpt-dev-is-ioas", _hwpt("A", "A"), both(E.ENOENT)),
    ("hwpt-unknown-pt", _hwpt("nic", 999), {"linux-6.6": E.ENOENT, "linux-6.12": E.EINVAL}),
    ("hwpt-pt-is-device", _hwpt("nic", "gpu"), {"linux-6.6": E.ENOENT, "linux-6.12": E.EINVAL}),
    ("hwpt-unaligned-area", _hwpt("nic", "Z"), both(E.EADDRINUSE)),
    ("hwpt-flags-6.6", _hwpt("nic", "A", NEST), {"linux-6.6": E.EOPNOTSUPP}),
    ("hwpt-6.8-fields-on-6.6", _hwpt("nic", "A", 0, uapi.IOMMU_HWPT_DATA_VTD_S1, VTD_S1), {"linux-6.6": E.E2BIG}),
    ("hwpt-reserved", ioctl_ifd(uapi.IOMMU_HWPT_ALLOC, raw(uapi.iommu_hwpt_alloc_v6_6, dev_id=3, pt_id=1,
                                                           **{"__reserved": 1})), both(E.EOPNOTSUPP)),
    ("hwpt-nest-parent-no-nesting", _hwpt("gpu", "A", NEST), {"linux-6.12": E.EOPNOTSUPP}),
    ("hwpt-dirty-no-ssads", _hwpt("ssd1", "A", DIRTY), {"linux-6.12": E.EOPNOTSUPP}),
    ("hwpt-fault-id-on-paging", _hwpt("nic", "A", uapi.IOMMU_HWPT_FAULT_ID_VALID), {"linux-6.12": E.EOPNOTSUPP}),
    ("hwpt-unknown-flag", _hwpt("nic", "A", 1 << 9), {"linux-6.12": E.EOPNOTSUPP}),
    ("hwpt-data-type-without-data", _hwpt("nic", "A", 0, uapi.IOMMU_HWPT_DATA_VTD_S1), {"linux-6.12": E.EINVAL}),
    ("hwpt-data-without-type", _hwpt("nic", "A", 0, 0, VTD_S1), {"linux-6.12": E.EINVAL}),
    ("hwpt-data-for-paging", _hwpt("nic", "A", 0, uapi.IOMMU_HWPT_DATA_VTD_S1, VTD_S1), {"linux-6.12": E.EOPNOTSUPP}),
    ("hwpt-nested-on-auto", _hwpt("nic", "auto-nic", 0, uapi.IOMMU_HWPT_DATA_VTD_S1, VTD_S1), {"linux-6.12": E.EINVAL}),
    ("hwpt-nested-not-parent", _hwpt("nic", "UCC", 0, uapi.IOMMU_HWPT_DATA_VTD_S1, VTD_S1), {"linux-6.12": E.EINVAL}),
    ("hwpt-nested-no-data", _hwpt("nic", "UCC"), {"linux-6.12": E.EOPNOTSUPP}),
    ("hwpt-nested-flags", _hwpt("nic", "UCC", NEST, uapi.IOMMU_HWPT_DATA_VTD_S1, VTD_S1), {"linux-6.12": E.EOPNOTSUPP}),
    # VFIO_DEVICE_ATTACH_IOMMUFD_PT (attach and replace)
    ("attach-unknown-pt", _attach("ssd1", 999), both(E.ENOENT)),
    ("attach-pt-is-device", _attach("ssd1", "nic"), both(E.EINVAL)),
    ("attach-group-conflict", _attach("ssd1", "U"), both(E.EINVAL)),
    ("attach-group-conflict-ioas", _attach("ssd1", "B"), both(E.EINVAL)),
    ("attach-msi-window-mapped", _attach("gpu", "M"), both(E.EADDRINUSE)),
    ("attach-unaligned-area", _attach("nic", "Z"), both(E.EADDRINUSE)),
    ("replace-non-sc-into-cc-hwpt", _attach("gpu", "UCC"), both(E.EINVAL)),
    ("replace-unknown-pt", _attach("nic", 999), both(E.ENOENT)),
    ("attach-not-bound", _second_cdev_attach("nic", "A"), both(E.EINVAL)),
    ("attach-flags", ioctl_cdev("ssd1", uapi.VFIO_DEVICE_ATTACH_IOMMUFD_PT,
                                raw(uapi.vfio_device_attach_iommufd_pt, flags=1, pt_id=1)), both(E.EINVAL)),
    ("attach-argsz-small", ioctl_cdev("ssd1", uapi.VFIO_DEVICE_ATTACH_IOMMUFD_PT,
                                      raw(uapi.vfio_device_attach_iommufd_pt, size=8, pt_id=1)), both(E.EINVAL)),
    ("attach-buffer-short", ioctl_cdev("ssd1", uapi.VFIO_DEVICE_ATTACH_IOMMUFD_PT, bytearray(8)), both(E.EFAULT)),
    # VFIO_DEVICE_DETACH_IOMMUFD_PT
    ("detach-flags", ioctl_cdev("nic", uapi.VFIO_DEVICE_DETACH_IOMMUFD_PT,
                                raw(uapi.vfio_device_detach_iommufd_pt, flags=1)), both(E.EINVAL)),
    # VFIO_DEVICE_BIND_IOMMUFD
    ("bind-twice", _bind_with("nic", lambda env: env.ifd.fd), both(E.EINVAL)),
    ("bind-negative-fd", _bind_with("nic", lambda env: -1), both(E.EINVAL)),
    ("bind-flags", ioctl_cdev("nic", uapi.VFIO_DEVICE_BIND_IOMMUFD,
                              raw(uapi.vfio_device_bind_iommufd, flags=1, iommufd=3)), both(E.EINVAL)),
    ("bind-closed-fd", _bind_with("nic", lambda env: 999, fresh_fd=True), both(E.EBADF)),
    ("bind-not-an-iommufd", _bind_with("nic", lambda env: env.cdev("gpu").fd, fresh_fd=True), both(E.EBADFD)),
    ("bind-device-open-elsewhere", _bind_with("nic", lambda env: env.ifd.fd, fresh_fd=True), both(E.EINVAL)),
    ("open-group-of-bound-device", lambda env: env.t.open(env.emu.group_path("nic")), both(E.EBUSY)),
    # IOMMU_GET_HW_INFO
    ("hw-info-unknown-dev", _hw_info(999), both(E.ENOENT)),
    ("hw-info-flags", _hw_info("nic", flags=1), both(E.EOPNOTSUPP)),
    ("hw-info-reserved", _hw_info("nic", **{"__reserved": (ctypes.c_uint8 * 3)(0, 1, 0)}), both(E.EOPNOTSUPP)),
    ("hw-info-bad-pointer", _hw_info("nic", data_uptr=0x1000), both(E.EFAULT)),
    # the size field (iommufd_fops_ioctl, copy_struct_from_user)
    ("size-below-min", ioctl_ifd(uapi.IOMMU_DESTROY, raw(uapi.iommu_destroy, size=4, id=1)), both(E.EINVAL)),
    ("size-below-min-map", ioctl_ifd(uapi.IOMMU_IOAS_MAP, raw(uapi.iommu_ioas_map, size=32, ioas_id=1)),
     both(E.EINVAL)),
    ("size-below-min-hwpt", ioctl_ifd(uapi.IOMMU_HWPT_ALLOC, raw(uapi.iommu_hwpt_alloc, size=20, dev_id=3, pt_id=1)),
     both(E.EINVAL)),
    ("size-nonzero-tail", ioctl_ifd(uapi.IOMMU_IOAS_ALLOC, raw(uapi.iommu_ioas_alloc, tail=b"\0\0\0\1")),
     both(E.E2BIG)),
    ("size-nonzero-tail-destroy", ioctl_ifd(uapi.IOMMU_DESTROY, raw(uapi.iommu_destroy, id=1, tail=bytes(7) + b"\1")),
     both(E.E2BIG)),
    ("size-nonzero-tail-hw-info", ioctl_ifd(uapi.IOMMU_GET_HW_INFO, raw(uapi.iommu_hw_info, tail=b"\1")),
     both(E.E2BIG)),
    ("size-past-buffer", ioctl_ifd(uapi.IOMMU_IOAS_ALLOC, raw(uapi.iommu_ioas_alloc, size=64)), both(E.EFAULT)),
    ("buffer-shorter-than-size", ioctl_ifd(uapi.IOMMU_IOAS_ALLOC, bytearray(3)), both(E.EFAULT)),
    # unknown requests
    ("unknown-nr", ioctl_ifd(uapi._IO(uapi.IOMMUFD_TYPE, 0x9F), raw(uapi.iommu_destroy, id=1)), both(E.ENOTTY)),
    ("size-bits-in-request", ioctl_ifd(uapi._IOC(3, uapi.IOMMUFD_TYPE, uapi.IOMMUFD_CMD_DESTROY, 8),
                                       raw(uapi.iommu_destroy, id=999)), both(E.ENOTTY)),
    ("unknown-cdev-ioctl", ioctl_cdev("nic", uapi._IO(uapi.VFIO_TYPE, uapi.VFIO_BASE + 40), bytearray(16)),
     both(E.ENOTTY)),
    # IOMMU_VFIO_IOAS
    ("vfio-ioas-get-none", lambda env: env.ifd.vfio_ioas(uapi.IOMMU_VFIO_IOAS_GET), both(E.ENODEV)),
    ("vfio-ioas-set-unknown", lambda env: env.ifd.vfio_ioas(uapi.IOMMU_VFIO_IOAS_SET, 999), both(E.ENOENT)),
    ("vfio-ioas-set-hwpt", lambda env: env.ifd.vfio_ioas(uapi.IOMMU_VFIO_IOAS_SET, env.ids["U"]), both(E.ENOENT)),
    ("vfio-ioas-bad-op", lambda env: env.ifd.vfio_ioas(9), both(E.EOPNOTSUPP)),
]

GROUP_CASES = [
    ("destroy-compat-with-hwpts", _destroy("compat"), E.EBUSY),
    ("destroy-device", lambda env: env.ifd.destroy(env.host.devices["nic"].idev_id), E.EBUSY),
    ("map-overlap", _map("compat", 0x100000, PAGE), E.EEXIST),
    ("map-msi-window", _map("compat", MSI, PAGE), E.EINVAL),
    ("unmap-cuts", _unmap("compat", 0x100000, PAGE), E.ENOENT),
    ("get-device-fd-again", lambda env: env.group("nic").get_device_fd("nic"), E.EBUSY),
    ("get-device-fd-wrong-group", lambda env: env.group("nic").get_device_fd("gpu"), E.ENODEV),
    ("get-device-fd-unknown", lambda env: env.group("nic").get_device_fd("nope"), E.ENODEV),
    ("set-container-again", lambda env: env.group("nic").set_container(env.ifd), E.EINVAL),
    ("set-container-closed-fd", lambda env: env.t.ioctl(env.group("nic").fd, uapi.VFIO_GROUP_SET_CONTAINER,
                                                        uapi.vfio_group_fd(999)), E.EBADF),
    ("unset-container-devices-open", lambda env: env.t.ioctl(env.group("nic").fd, uapi.VFIO_GROUP_UNSET_CONTAINER,
                                                             bytearray(4)), E.EBUSY),
    ("open-group-twice", lambda env: env.t.open(env.emu.group_path("nic")), E.EBUSY),
    ("open-cdev-before-6.6", lambda env: env.t.open(env.emu.cdev_path("nic")), E.ENOENT),
    ("hwpt-alloc-before-6.6", _hwpt(1, "compat"), E.ENOTTY),
    ("hw-info-before-6.6", _hw_info(1), E.ENOTTY),
    ("cdev-attach-on-group-device-fd", lambda env: env.t.ioctl(
        env.devfds["nic"], uapi.VFIO_DEVICE_ATTACH_IOMMUFD_PT, raw(uapi.vfio_device_attach_iommufd_pt, pt_id=1)),
     E.ENOTTY),
    ("vfio-ioas-set-unknown", lambda env: env.ifd.vfio_ioas(uapi.IOMMU_VFIO_IOAS_SET, 999), E.ENOENT),
]


def _group_case_with_compat(ioas, dev):
    """Point the compat IOAS elsewhere first (a VMM's IOMMU_VFIO_IOAS SET), then open ``dev``."""
    def call(env):
        return env.group(dev).get_device_fd(dev)

    def setup(env):
        env.ifd.vfio_ioas(uapi.IOMMU_VFIO_IOAS_SET, env.ids[ioas])
    return setup, call


GROUP_CASES_WITH_SETUP = [
    # the bridge group sits in the compat HWPT of IOAS 1: the IOMMU core says EBUSY (6.2.1)
    ("group-conflict", *_group_case_with_compat("E", "ssd1"), E.EBUSY),
    # a fresh domain on M: the device's MSI window is mapped there
    ("msi-window-mapped", lambda env: (env.ifd.vfio_ioas(uapi.IOMMU_VFIO_IOAS_SET, env.ids["M"]),
                                       env.t.close(env.devfds.pop("gpu"))),
     lambda env: env.group("gpu").get_device_fd("gpu"), E.EADDRINUSE),
    ("no-compat-ioas", lambda env: env.ifd.vfio_ioas(uapi.IOMMU_VFIO_IOAS_CLEAR),
     lambda env: env.group("ssd1").get_device_fd("ssd1"), E.ENODEV),
]


def check_failure_leaves_state(env, call, want: int) -> None:
    before = env.host.snapshot()
    with pytest.raises(OSError) as e:
        call(env)
    assert e.value.errno == want, f"{e.value} (wanted {uapi.errno_name(want)})"
    assert env.host.snapshot() == before, f"{e.value} changed the state"


@pytest.mark.parametrize("profile,call,want", [
    pytest.param(p, call, err, id=f"{name}-{p}") for name, call, errnos in CDEV_CASES for p, err in errnos.items()])
def test_errno_path_leaves_state_unchanged_cdev(profile, call, want):
    env = cdev_fixture(profile)
    check_failure_leaves_state(env, call, want)
    env.drain()


@pytest.mark.parametrize("case", GROUP_CASES, ids=[c[0] for c in GROUP_CASES])
def test_errno_path_leaves_state_unchanged_group_path(case):
    _, call, want = case
    env = group_fixture()
    check_failure_leaves_state(env, call, want)
    env.drain()


@pytest.mark.parametrize("case", GROUP_CASES_WITH_SETUP, ids=[c[0] for c in GROUP_CASES_WITH_SETUP])
def test_errno_path_leaves_state_unchanged_group_path_setup(case):
    _, setup, call, want = case
    env = group_fixture()
    setup(env)
    check_failure_leaves_state(env, call, want)
    env.drain()


@pytest.mark.parametrize("profile", CDEV_PROFILES)
def test_bind_to_a_second_iommufd_of_a_group_owned_by_the_first(profile):
    """iommu_device_claim_dma_owner: the bridge group is owned by the first ctx -> EPERM."""
    env = Env(profile)
    env.bind("ssd0")
    other = Iommufd(env.t)
    check_failure_leaves_state(env, lambda env: env.cdev("ssd1").bind(other), errno.EPERM)
    other.close()
    env.drain()


def test_set_container_errors_on_a_fresh_group():
    """vfio_group_ioctl_set_container: fdget (EBADF), then not an iommufd (EBADFD)."""
    env = Env("linux-6.2")
    for fd, want in ((999, errno.EBADF), (env.group("gpu").fd, errno.EBADFD)):
        check_failure_leaves_state(env, lambda env: env.t.ioctl(env.group("nic").fd, uapi.VFIO_GROUP_SET_CONTAINER,
                                                                uapi.vfio_group_fd(fd)), want)
    env.drain()


def test_every_errno_family_is_covered():
    """The cases above reach every errno the brief names, on some profile."""
    seen = {e for _, _, errnos in CDEV_CASES for e in errnos.values()} | {w for *_, w in GROUP_CASES}
    for name in ("EINVAL", "ENOENT", "EBUSY", "EEXIST", "EOPNOTSUPP", "E2BIG", "EOVERFLOW", "EADDRINUSE",
                 "ENOTTY", "EFAULT"):
        assert uapi.errno_value(name) in seen, name


# -- the size field's other side: larger structs with zero tails, older (shorter) layouts ------------
@pytest.mark.parametrize("profile", CDEV_PROFILES)
def test_zero_tail_is_accepted_and_acts_like_the_plain_call(profile):
    env, ref = Env(profile), Env(profile)
    buf = raw(uapi.iommu_ioas_alloc, tail=bytes(20))
    assert env.t.ioctl(env.ifd.fd, uapi.IOMMU_IOAS_ALLOC, buf) == 0
    got = uapi.iommu_ioas_alloc.from_buffer_copy(bytes(buf[:12]))
    assert got.out_ioas_id == ref.ifd.ioas_alloc().id
    assert buf[12:] == bytes(20)                           # nothing written past the kernel struct
    assert canonical(env.host) == canonical(ref.host)
    env.drain()
    ref.drain()


def test_first_version_struct_is_accepted_by_later_kernels():
    """A 24-byte (6.6) HWPT_ALLOC on 6.12: the tail is zero-filled (data_type NONE)."""
    env = Env("linux-6.12")
    env.ioas_alloc("A")
    env.bind("nic")
    buf = raw(uapi.iommu_hwpt_alloc_v6_6, dev_id=env.ids["nic"], pt_id=env.ids["A"])
    assert len(buf) == 24
    env.t.ioctl(env.ifd.fd, uapi.IOMMU_HWPT_ALLOC, buf)
    hwpt = uapi.iommu_hwpt_alloc_v6_6.from_buffer_copy(bytes(buf)).out_hwpt_id
    assert env.ctx.objects[hwpt].type == "hwpt_paging"
    env.drain()


@pytest.mark.parametrize("profile", CDEV_PROFILES)
def test_hw_info_with_6_6_layout_and_zero_tail(profile):
    env = Env(profile)
    env.bind("nic")
    for buf in (raw(uapi.iommu_hw_info_v6_6, dev_id=env.ids["nic"], data_len=24, data_uptr=env.uva),
                raw(uapi.iommu_hw_info, dev_id=env.ids["nic"], data_len=24, data_uptr=env.uva, tail=bytes(16))):
        before = env.host.snapshot()
        env.t.ioctl(env.ifd.fd, uapi.IOMMU_GET_HW_INFO, buf)
        assert uapi.iommu_hw_info_v6_6.from_buffer_copy(bytes(buf[:32])).out_data_type == \
            uapi.IOMMU_HW_INFO_TYPE_INTEL_VTD
        assert env.host.snapshot() == before                 # a query changes nothing
    env.drain()


# -- unmap: the documented partial failure ---------------------------------------------------------
@pytest.mark.parametrize("profile", ["linux-6.2", *CDEV_PROFILES])
def test_failed_unmap_keeps_only_the_areas_before_the_cut(profile):
    env = Env(profile)
    env.ioas_alloc("A")
    for iova in (0x100000, 0x102000, 0x104000):
        env.map("A", iova, PAGE)
    env.map("A", 0x106000, 2 * PAGE)
    with pytest.raises(OSError) as e:
        env.ioas("A").unmap(0x100000, 0x107000 - 0x100000)   # three whole areas, then a cut
    assert e.value.errno == errno.ENOENT
    assert [(s, l) for s, (l, _) in env.ctx.objects[env.ids["A"]].iopt.areas.items()] == [(0x106000, 0x107FFF)]
    env.drain()


# -- closing in any order drains the host (the ctx outlives its fd while in use) ---------------------
@pytest.mark.parametrize("profile", CDEV_PROFILES)
def test_close_iommufd_before_devices(profile):
    env = cdev_fixture(profile)
    ctx = env.ctx
    env.ifd.close()
    assert env.host.ctxs and ctx.objects            # bound devices hold the ctx
    env.drain()


def test_close_iommufd_before_group():
    env = Env("linux-6.2")
    env.set_container("nic")
    ctx = env.ctx
    env.ifd.close()
    assert list(env.host.ctxs.values()) == [ctx]    # the group's container reference holds it
    fd = env.group("nic").get_device_fd("nic")      # and the group still works
    assert env.host.devices["nic"].attached
    env.t.close(fd)
    env.drain()
