"""The guest agent: plays conformance scenarios on the real kernel it runs on.

Run by the VM's /init as ``python3 -m pyiommufd.conform.agent /job.json``.  The guest has only
the standard library, so this imports only modules that import nothing third-party at module
level: runner, client, scenario, uapi, errors, profiles, transport, hazards (and userspace,
which the runner imports), plus this package's stdlib-only observe and sysfs.  The emulator
(kernel/) is never imported here.

Job: ``{"config": NAME, "profile": "linux-6.12", "dma_probe": bool,
"scenarios": [{"name": ..., "toml": ...}, ...]}``.  (``pyiommufd info`` on this real host runs
as its own module, ``hostinfo``.)

Output, one JSON object per line: first ``{"kind": "env", ...}`` (kernel, edu devices, units),
then ``{"kind": "dma", ...}`` when asked, then one ``{"kind": "scenario", ...}`` per scenario
in job order.  Each scenario gets a fresh RealTransport and /dev/iommu fd; everything it opened
is closed before the next one starts, and fds left open are reported (``fds_leaked``).

Scenario device i is the i-th edu device by BDF; ``kvm_add``, ``kvm_del`` and ``dma`` steps are
not run (``"run": false``), and hotplug/hot_unplug do their iommufd part only.
"""
from __future__ import annotations

import ctypes
import dataclasses
import json
import os
import sys
import time
import tomllib
import traceback

from .. import uapi
from ..client import Iommufd, VfioDevice
from ..errors import IoctlError
from ..profiles import get_profile, profile_from_json, register_profile
from ..runner import Vmm
from ..scenario import parse
from ..transport import RealTransport
from . import observe, sysfs
from .probe_agent import kmsg_open, kmsg_read

# --- VFIO region access (vfio.h, 6.12) --------------------------------------------------------
VFIO_DEVICE_GET_REGION_INFO = (ord(";") << 8) | (100 + 8)
VFIO_PCI_BAR0_REGION_INDEX = 0
VFIO_PCI_CONFIG_REGION_INDEX = 7
PCI_COMMAND = 0x04
PCI_COMMAND_MEMORY, PCI_COMMAND_MASTER = 0x2, 0x4


class vfio_region_info(ctypes.Structure):
    """struct vfio_region_info { __u32 argsz, flags, index, cap_offset; __u64 size, offset; }"""
    _fields_ = [("argsz", ctypes.c_uint32), ("flags", ctypes.c_uint32), ("index", ctypes.c_uint32),
                ("cap_offset", ctypes.c_uint32), ("size", ctypes.c_uint64), ("offset", ctypes.c_uint64)]


# --- QEMU edu (hw/misc/edu.c) -------------------------------------------------------------------
EDU_IDENT, EDU_DMA_SRC, EDU_DMA_DST, EDU_DMA_CNT, EDU_DMA_CMD = 0x00, 0x80, 0x88, 0x90, 0x98
EDU_DMA_RUN, EDU_DMA_TO_PCI = 0x1, 0x2
EDU_BUF = 0x40000          # the device's 4 KiB DMA buffer, as a DMA "address" inside the device
EDU_DMA_LEN = 2048         # edu_check_range rejects a transfer ending at the buffer's end: 4 KiB aborts QEMU


class GroupNamesTransport(RealTransport):
    """The real transport, except for VFIO_GROUP_GET_DEVICE_FD (the group path of kernels
    without cdevs): the device is named by its PCI address, as the kernel's dev_name() is, where
    the runner names it by its scenario name (the emulator's device name); and the device fd it
    returns is this transport's to close, so a scenario ending with a device open does not leave
    it bound (and attached) into the next scenario."""

    def __init__(self, bdfs: dict[str, str]):
        super().__init__()
        self.bdfs = bdfs
        self.devfds: set[int] = set()

    def ioctl(self, fd: int, request: int, buf) -> int:
        if request != uapi.VFIO_GROUP_GET_DEVICE_FD:
            return super().ioctl(fd, request, buf)
        if buf.value.decode() in self.bdfs:
            buf = ctypes.create_string_buffer(self.bdfs[buf.value.decode()].encode())
        devfd = super().ioctl(fd, request, buf)
        self.fds.add(devfd)
        self.devfds.add(devfd)
        return devfd

    def close(self, fd: int) -> None:
        self.devfds.discard(fd)
        super().close(fd)

    def close_all(self) -> None:
        # Device fds before their group's, as a VMM does: fd numbers are reused, so "newest
        # first" can close a group while its device is open -- on 6.2.1 the next scenario's
        # VFIO_GROUP_GET_DEVICE_FD on that group then failed with EPERM (docs/conformance.md).
        for fd in sorted(self.devfds, reverse=True):
            self.close(fd)
        super().close_all()


class RealMachine:
    """What Vmm needs of a machine (``machine=``), on the real kernel this runs on."""

    host = None

    def __init__(self, scenario, devices: list[dict], profile: str):
        self.transport = GroupNamesTransport({d.name: devices[i]["bdf"]
                                              for i, d in enumerate(scenario.system.devices)})
        self.profile = get_profile(profile)
        self.devices = {d.name: devices[i] for i, d in enumerate(scenario.system.devices)}

    def cdev_path(self, name: str) -> str:
        return "/dev/vfio/devices/" + self.devices[name]["cdev"]

    def group_path(self, name: str) -> str:
        return "/dev/vfio/" + self.devices[name]["iommu_group"]


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def run_scenario(item: dict, devices: list[dict], profile: str) -> dict:
    out = {"kind": "scenario", "name": item["name"], "steps": []}
    t0 = time.monotonic()
    before = _open_fds()
    machine = None
    try:
        sc = parse(tomllib.loads(item["toml"]), item["name"])
        if len(sc.system.devices) > len(devices):
            raise RuntimeError(f"scenario has {len(sc.system.devices)} devices, the VM {len(devices)}")
        # No VM here: hotplug/hot_unplug do their iommufd part only.
        sc.system = dataclasses.replace(sc.system, kvm=False)
        machine = RealMachine(sc, devices, profile)
        vmm = Vmm(sc, profile, machine=machine)
        tracker = observe.Tracker()
        for step in sc.steps:
            if step.op in observe.SKIP_ON_REAL:
                out["steps"].append(observe.not_run(step))
                continue
            result = vmm.apply(step)
            tracker.update(step, result)
            pt = {name: sysfs.cc_of(sysfs.page_table(d["bdf"], unit=d["iommu"])) for name, d in machine.devices.items()}
            met = observe.expect_met(step, result, vmm.resolve, profile)
            out["steps"].append(observe.record(step, result, tracker, pt, met))
    except Exception:
        out["error"] = traceback.format_exc(limit=6)
    finally:
        if machine is not None:
            machine.transport.close_all()
    leaked = sorted(_open_fds() - before, key=int)
    if leaked:
        out["fds_leaked"] = leaked
    out["seconds"] = round(time.monotonic() - t0, 3)
    return out


# --- the README's client example ------------------------------------------------------------
def client_example(t, cdev_paths: list[str]) -> list[int]:
    """The README's client example, verbatim but for the transport and the cdev paths: the
    harness runs it on the emulator and the agent on the real kernel, and the ids must agree."""
    pts = []
    with Iommufd(t) as iommufd:
        ioas = iommufd.ioas_alloc()
        ioas.map(0x100000, 0x2000)
        for path in cdev_paths:
            dev = VfioDevice(t, path)
            dev.bind(iommufd)
            pts.append(dev.attach(ioas.id))
    return pts


def run_client_example(devices: list[dict]) -> dict:
    t = RealTransport()
    try:
        return {"kind": "example", "pts": client_example(t, ["/dev/vfio/devices/" + d["cdev"] for d in devices[:2]])}
    except (IoctlError, OSError) as e:
        return {"kind": "example", "error": f"{type(e).__name__}: {e}"}
    finally:
        t.close_all()


# --- the DMA probe ------------------------------------------------------------------------------
def _region(t: RealTransport, fd: int, index: int) -> vfio_region_info:
    info = vfio_region_info(argsz=ctypes.sizeof(vfio_region_info), index=index)
    t.ioctl(fd, VFIO_DEVICE_GET_REGION_INFO, info)
    return info


def _r32(fd: int, off: int) -> int:
    return int.from_bytes(os.pread(fd, 4, off), "little")


def _w32(fd: int, off: int, val: int) -> None:
    if os.pwrite(fd, val.to_bytes(4, "little"), off) != 4:
        raise OSError("short write to the device region")


def edu_dma(fd: int, bar0: int, src: int, dst: int, count: int, to_pci: bool, timeout: float = 5.0) -> float:
    """One edu DMA (4-byte register writes: the IOVAs here are below 4 GiB); polls the command
    register until the device clears RUN; returns the seconds it took."""
    _w32(fd, bar0 + EDU_DMA_SRC, src)
    _w32(fd, bar0 + EDU_DMA_DST, dst)
    _w32(fd, bar0 + EDU_DMA_CNT, count)
    _w32(fd, bar0 + EDU_DMA_CMD, EDU_DMA_RUN | (EDU_DMA_TO_PCI if to_pci else 0))
    t0 = time.monotonic()
    while _r32(fd, bar0 + EDU_DMA_CMD) & EDU_DMA_RUN:
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(f"edu DMA did not finish in {timeout} s")
        time.sleep(0.005)
    return round(time.monotonic() - t0, 3)


def dma_probe(dev: dict, src_iova: int = 0x100000, dst_iova: int = 0x200000) -> dict:
    """Real DMA by an edu device through an IOAS mapping, checked end to end.

    Bind the device, attach it to an IOAS, map a pattern buffer at ``src_iova`` and a zeroed one
    at ``dst_iova``, enable memory decoding and bus mastering through the VFIO config region, then
    have edu copy 2 KiB from ``src_iova`` into its buffer and from there to ``dst_iova``: the
    destination must hold the pattern.  Then unmap ``dst_iova``, zero the buffer and DMA there
    again: the IOMMU must block it (the buffer stays zero, the kernel logs a DMAR fault)."""
    res: dict = {"kind": "dma", "bdf": dev["bdf"], "ok": False}
    kmsg = kmsg_open()
    t = RealTransport()
    try:
        ifd = Iommufd(t)
        ioas = ifd.ioas_alloc()
        vdev = VfioDevice(t, "/dev/vfio/devices/" + dev["cdev"])
        vdev.bind(ifd)
        res["pt_id"] = vdev.attach(ioas.id)
        src, dst = t.mmap(4096), t.mmap(4096)
        pattern = bytes((i * 7 + 3) & 0xFF for i in range(4096))
        ctypes.memmove(src, pattern, 4096)
        ctypes.memset(dst, 0, 4096)
        ioas.map(src_iova, 4096, user_va=src)
        ioas.map(dst_iova, 4096, user_va=dst)
        bar0 = _region(t, vdev.fd, VFIO_PCI_BAR0_REGION_INDEX)
        cfg = _region(t, vdev.fd, VFIO_PCI_CONFIG_REGION_INDEX)
        cmd = int.from_bytes(os.pread(vdev.fd, 2, cfg.offset + PCI_COMMAND), "little")
        os.pwrite(vdev.fd, (cmd | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER).to_bytes(2, "little"),
                  cfg.offset + PCI_COMMAND)
        res["bar0"] = {"size": bar0.size, "flags": bar0.flags}
        res["ident"] = hex(_r32(vdev.fd, bar0.offset + EDU_IDENT))
        res["read_seconds"] = edu_dma(vdev.fd, bar0.offset, src_iova, EDU_BUF, EDU_DMA_LEN, to_pci=False)
        res["write_seconds"] = edu_dma(vdev.fd, bar0.offset, EDU_BUF, dst_iova, EDU_DMA_LEN, to_pci=True)
        got = ctypes.string_at(dst, 4096)
        res["copied"] = got[:EDU_DMA_LEN] == pattern[:EDU_DMA_LEN]
        res["rest_untouched"] = got[EDU_DMA_LEN:] == bytes(4096 - EDU_DMA_LEN)
        res["page_table"] = sysfs.cc_of(sysfs.page_table(dev["bdf"], unit=dev["iommu"]))
        res["unmapped"] = ioas.unmap(dst_iova, 4096)
        ctypes.memset(dst, 0, 4096)
        edu_dma(vdev.fd, bar0.offset, EDU_BUF, dst_iova, EDU_DMA_LEN, to_pci=True)
        res["blocked_after_unmap"] = ctypes.string_at(dst, 4096) == bytes(4096)
        res["ok"] = res["copied"] and res["rest_untouched"] and res["blocked_after_unmap"]
    except (IoctlError, OSError, TimeoutError) as e:
        res["error"] = f"{type(e).__name__}: {e}"
    finally:
        t.close_all()
    res["kernel_log"] = [ln for ln in kmsg_read(kmsg) if "DMAR" in ln or "fault" in ln.lower()][:8]
    if kmsg is not None:
        os.close(kmsg)
    return res


# --- main ----------------------------------------------------------------------------------------
def _emit(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def main(argv: list[str]) -> int:
    with open(argv[1]) as f:
        job = json.load(f)
    devices = sysfs.edu_devices()
    uname = os.uname()
    _emit({"kind": "env", "config": job.get("config"), "kernel": uname.release,
           "devices": devices, "units": sysfs.iommu_units(), "groups": sysfs.iommu_groups(),
           "intel_debugfs": os.path.isdir("/sys/kernel/debug/iommu/intel")})
    # The DMA check and the README example go through cdevs: kernels before 6.6 have none (their
    # scenarios take the group path, see runner.Vmm).
    cdevs = bool(devices) and all(d["cdev"] for d in devices)
    if job.get("dma_probe") and devices and cdevs:
        _emit(dma_probe(devices[0]))
    if job.get("client_example") and len(devices) >= 2 and cdevs:
        _emit(run_client_example(devices))
    profile = job.get("profile", "linux-6.12")
    if "profile_def" in job:   # a profile file's profile: registered here, as the host's CLI did
        register_profile(profile_from_json(job["profile_def"]))
    for item in job.get("scenarios", []):
        _emit(run_scenario(item, devices, profile))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
