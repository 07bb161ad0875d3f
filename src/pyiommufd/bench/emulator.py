"""Emulator benchmarks: ioctl throughput through the full struct path, and map/unmap scaling.

Both drive the emulated kernel the way a VMM does: the client API builds the uAPI ctypes
structs, ``EmulatedTransport`` hands the bytes to ``Host.ioctl``, which decodes them as
Linux would, runs the handler and writes the answer back.
"""
from __future__ import annotations

import ctypes
import time

from .. import uapi
from ..client import Iommufd, VfioDevice, emulated
from ..system import System

PAGE = 0x1000
FLOOR = "IOMMU_OPTION get, struct built once (the path alone)"
# One cycle of the ioctl mix, in order (each entry one ioctl).  A VMM mostly maps and unmaps
# (guest RAM, BARs, vIOMMU shadowing); domain management is rarer but on every device
# (re)configuration: a user HWPT round trip and an auto-domain round trip.
MIX = ("map", "map", "unmap", "unmap", "hwpt_alloc", "attach", "detach", "destroy", "attach", "detach")


class _Machine:
    """One emulated Intel machine: a CC-capable ``nic``, a non-SC ``gpu``, one IOAS, both bound."""

    def __init__(self, profile: str = "linux-6.12"):
        self.emu = emulated(System.simple("intel", devices={"gpu": False, "nic": True}), profile)
        t = self.emu.transport
        self.iommufd = Iommufd(t)
        self.ioas = self.iommufd.ioas_alloc()
        self.gpu = VfioDevice(t, self.emu.cdev_path("gpu"))
        self.nic = VfioDevice(t, self.emu.cdev_path("nic"))
        self.gpu_id, self.nic_id = self.gpu.bind(self.iommufd), self.nic.bind(self.iommufd)
        self.uva = t.mmap(PAGE)       # one buffer: every map points at it, as guest RAM would

    def cycle(self, i: int) -> None:
        """The MIX, once (10 ioctls)."""
        ioas, iova = self.ioas, 0x100000 + (i & 1023) * 2 * PAGE
        ioas.map(iova, PAGE, user_va=self.uva)
        ioas.map(iova + PAGE, PAGE, user_va=self.uva)
        ioas.unmap(iova, PAGE)
        ioas.unmap(iova + PAGE, PAGE)
        hwpt = self.iommufd.hwpt_alloc(self.nic_id, ioas.id)
        self.nic.attach(hwpt)
        self.nic.detach()
        self.iommufd.destroy(hwpt)
        self.gpu.attach(ioas.id)      # the kernel's auto-domain search, a new auto HWPT
        self.gpu.detach()             # ... destroyed with its last device


def ioctl_throughput(cycles: int = 2000, repeats: int = 15, profile: str = "linux-6.12") -> dict:
    """ioctls per second of the MIX through client + EmulatedTransport: ``repeats`` bursts of
    ``cycles`` cycles; the best burst (the least disturbed by other tenants) and the median."""
    m = _Machine(profile)
    m.cycle(0)   # warm up
    walls, cpus = [], []
    for r in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        for i in range(cycles):
            m.cycle(i)
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    n = cycles * len(MIX)
    walls.sort(), cpus.sort()
    return {"ioctls": n * repeats, "bursts": repeats, "mix": list(MIX), "seconds": round(walls[0], 4),
            "cpu_seconds": round(cpus[0], 4), "ioctls_per_s": round(n / walls[0]),
            "ioctls_per_cpu_s": round(n / cpus[0]), "median_ioctls_per_cpu_s": round(n / cpus[len(cpus) // 2])}


def real_ioctl_cost(calls: int = 20000, repeats: int = 5) -> dict:
    """A real ioctl syscall made from Python, for scale: TCGETS on a pty through ``fcntl.ioctl`` with a
    writable buffer (the kernel copies a struct termios out), CPU microseconds per call, best of ``repeats``."""
    import fcntl
    import os
    import termios
    master, slave = os.openpty()
    buf = bytearray(64)
    try:
        fcntl.ioctl(slave, termios.TCGETS, buf)
        best = float("inf")
        for _ in range(repeats):
            c0 = time.process_time()
            for _ in range(calls):
                fcntl.ioctl(slave, termios.TCGETS, buf)
            best = min(best, time.process_time() - c0)
    finally:
        os.close(master)
        os.close(slave)
    return {"ioctl": "TCGETS on a pty (fcntl.ioctl, 64-byte buffer)", "calls": calls * repeats,
            "us_per_call": round(best / calls * 1e6, 3)}


def per_op_costs(pairs: int = 1000, profile: str = "linux-6.12", bursts: int = 5) -> dict:
    """CPU microseconds per ioctl for each kind in the MIX, measured in pairs that leave the
    machine as they found it (best of ``bursts``); and ``FLOOR``, an ioctl with next to no model work
    (IOMMU_OPTION get) on a buffer built once, which is what the transport + decode path costs by itself."""
    m = _Machine(profile)
    ioas, uva = m.ioas, m.uva
    hwpt = m.iommufd.hwpt_alloc(m.nic_id, ioas.id)

    def map_unmap(i):
        ioas.map(0x100000, PAGE, user_va=uva)
        ioas.unmap(0x100000, PAGE)

    def alloc_destroy(i):
        m.iommufd.destroy(m.iommufd.hwpt_alloc(m.nic_id, ioas.id))

    def attach_hwpt(i):
        m.nic.attach(hwpt)
        m.nic.detach()

    def attach_auto(i):
        m.gpu.attach(ioas.id)
        m.gpu.detach()

    # the least model work of any ioctl, with the bytes a VMM passes built once: what the emulator's path
    # itself costs (EmulatedTransport, Host.ioctl's decode and dispatch, the copy back)
    t, fd = m.emu.transport, m.iommufd.fd
    opt = bytearray(uapi.iommu_option(size=ctypes.sizeof(uapi.iommu_option), option_id=uapi.IOMMU_OPTION_RLIMIT_MODE,
                                      op=uapi.IOMMU_OPTION_OP_GET))

    def option_get(i):
        t.ioctl(fd, uapi.IOMMU_OPTION, opt)
        t.ioctl(fd, uapi.IOMMU_OPTION, opt)

    out = {}
    for name, fn in (("map+unmap", map_unmap), ("hwpt_alloc+destroy", alloc_destroy),
                     ("attach+detach (HWPT id)", attach_hwpt), ("attach+detach (IOAS id: auto domain)", attach_auto),
                     (FLOOR, option_get)):
        fn(0)
        best = float("inf")
        for _ in range(bursts):
            c0 = time.process_time()
            for i in range(pairs):
                fn(i)
            best = min(best, time.process_time() - c0)
        out[name] = round(best / (2 * pairs) * 1e6, 2)
    return out


def layer_shares(prof) -> dict:
    """A cProfile run of the MIX, its own time by layer: the client building structs, the
    transport, Host.ioctl decoding and dispatching, the kernel model's handlers, C builtins."""
    import pstats
    st = pstats.Stats(prof)
    total = st.total_tt or 1.0
    layers = {"client (build structs, read answers)": 0.0, "transport": 0.0, "host: ioctl decode + dispatch": 0.0,
              "kernel model (handlers)": 0.0, "C builtins (ctypes, memoryview, dict, list)": 0.0, "other": 0.0}
    for (file, _, _), (_, _, tt, _, _) in st.stats.items():
        f = file.replace("\\", "/")
        if file == "~":
            layers["C builtins (ctypes, memoryview, dict, list)"] += tt
        elif f.endswith(("/client.py", "/uapi.py")):
            layers["client (build structs, read answers)"] += tt
        elif f.endswith("/transport.py"):
            layers["transport"] += tt
        elif f.endswith("/kernel/host.py"):
            layers["host: ioctl decode + dispatch"] += tt
        elif "/kernel/" in f:
            layers["kernel model (handlers)"] += tt
        else:
            layers["other"] += tt
    return {k: round(v / total, 3) for k, v in layers.items()}


def profile_cycle(cycles: int = 3000, profile: str = "linux-6.12") -> "object":
    import cProfile
    m = _Machine(profile)
    prof = cProfile.Profile()
    prof.enable()
    for i in range(cycles):
        m.cycle(i)
    prof.disable()
    return prof


# -- map/unmap scaling -----------------------------------------------------------------
class LiveIoas:
    """An IOAS with a device attached (so each map also fills a driver domain) and ``live``
    mappings of one page each, a page apart; ``probe`` maps and unmaps in the gaps between them."""

    def __init__(self, m: _Machine, device: VfioDevice, live: int, base: int):
        self.m, self.live, self.base = m, live, base
        self.ioas = m.iommufd.ioas_alloc()
        device.attach(self.ioas.id)   # an auto HWPT: its domain mirrors every mapping
        for i in range(live):
            self.ioas.map(base + 2 * i * PAGE, PAGE, user_va=m.uva)

    def areas(self) -> int:
        ctx = self.m.emu.host.ctxs[self.m.iommufd.fd]
        return len(ctx.objects[self.ioas.id].iopt.areas)

    def probe(self, ops: int, seed: int = 1) -> float:
        """CPU seconds for ``ops`` map + unmap pairs at pseudo-random gaps (the live set is unchanged)."""
        ioas, uva, base, live = self.ioas, self.m.uva, self.base, self.live
        x = seed
        gaps = []
        for _ in range(ops):
            x = (x * 6364136223846793005 + 1442695040888963407) & ((1 << 64) - 1)
            gaps.append(base + (2 * ((x >> 33) % live) + 1) * PAGE)
        t0 = time.process_time()
        for iova in gaps:
            ioas.map(iova, PAGE, user_va=uva)
            ioas.unmap(iova, PAGE)
        return time.process_time() - t0


def map_scaling(small: int = 1000, large: int = 1_000_000, ops: int = 5000, rounds: int = 5,
                profile: str = "linux-6.12", progress=None) -> dict:
    """Per-op cost of map/unmap with ``small`` and with ``large`` live mappings in one IOAS.
    Both IOASes live in one emulated machine and are probed in alternating rounds, best round
    each, so the ratio is measured under the same conditions."""
    m = _Machine(profile)
    t0 = time.perf_counter()
    a = LiveIoas(m, m.nic, small, 0x1000_0000)
    if progress:
        progress(f"map scaling: populating {large:,} mappings")
    b = LiveIoas(m, m.gpu, large, 0x10_0000_0000)
    populate = time.perf_counter() - t0
    assert a.areas() == small and b.areas() == large
    a.probe(min(ops, 200)), b.probe(min(ops, 200))     # warm up
    best = {small: float("inf"), large: float("inf")}
    for r in range(rounds):
        for live in (a, b):
            best[live.live] = min(best[live.live], live.probe(ops, seed=r + 1))
    assert a.areas() == small and b.areas() == large
    cost = {n: best[n] / (2 * ops) for n in best}
    return {"live": [small, large], "ops": 2 * ops, "rounds": rounds,
            "us_per_op": {str(n): round(c * 1e6, 3) for n, c in cost.items()},
            "ratio": round(cost[large] / cost[small], 3),
            "populate_seconds": round(populate, 2), "populate_maps_per_s": round((small + large) / populate)}


def profile_probe(live: int, ops: int = 2000, profile: str = "linux-6.12") -> "object":
    """cProfile of map/unmap pairs with ``live`` mappings in the IOAS."""
    import cProfile
    m = _Machine(profile)
    big = LiveIoas(m, m.gpu, live, 0x10_0000_0000)
    prof = cProfile.Profile()
    prof.enable()
    big.probe(ops)
    prof.disable()
    return prof
