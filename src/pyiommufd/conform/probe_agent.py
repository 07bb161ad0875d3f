"""Standalone probe run inside the conformance VM: ``python3 -m pyiommufd.conform.probe_agent
/job.json``.  Stdlib only and independent of the rest of pyiommufd, so it checks the VM itself.

Prints one JSON object: the kernel, the edu devices (BDF, driver, iommu_group, VFIO cdev), the
Intel units' ECAP, and a small real iommufd sequence (IOAS_ALLOC, BIND and ATTACH of every
device, MAP, GET_HW_INFO, DESTROY of the in-use HWPT) with the ids written back and errno names,
the Intel debugfs page-table dump after the MAP (leaf IOPTEs and their SNP bit), and, when
IOMMUFD_TEST is built in, a mock-domain sequence; and what the kernel logged meanwhile.

Struct layouts and numbers: include/uapi/linux/iommufd.h, vfio.h and
drivers/iommu/iommufd/iommufd_test.h of Debian's linux-source-6.12 (6.12.117).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import mmap
import os
import struct
import sys

from .sysfs import read


def _io(nr: int) -> int:
    """_IO(';', nr): iommufd and VFIO put no size or direction bits in the number."""
    return (ord(";") << 8) | nr


IOMMU_DESTROY = _io(0x80)
IOMMU_IOAS_ALLOC = _io(0x81)
IOMMU_IOAS_MAP = _io(0x85)
IOMMU_GET_HW_INFO = _io(0x8A)
IOMMU_TEST_CMD = _io(0x80 + 32)
VFIO_DEVICE_BIND_IOMMUFD = _io(100 + 18)
VFIO_DEVICE_ATTACH_IOMMUFD_PT = _io(100 + 19)

# struct formats; the first field is the struct's size (iommufd) or argsz (VFIO)
DESTROY = "<II"  # size, id
IOAS_ALLOC = "<III"  # size, flags, out_ioas_id
IOAS_MAP = "<IIIIQQQ"  # size, flags, ioas_id, __reserved, user_va, length, iova
HW_INFO = "<IIIIQIB3xQ"  # size, flags, dev_id, data_len, data_uptr, out_data_type,
#                          out_max_pasid_log2, __reserved[3], out_capabilities
HW_INFO_VTD = "<IIQQ"  # flags, __reserved, cap_reg, ecap_reg
BIND = "<IIiI"  # argsz, flags, iommufd, out_devid
ATTACH = "<III"  # argsz, flags, pt_id
# iommu_test_cmd: size, op, id, __reserved, a 48-byte union, last (+4 bytes of tail padding)
TEST_CMD = "<IIII48sI4x"
TEST_OP_MOCK_DOMAIN = 2
MOCK_APERTURE_START = 1 << 24

MAP_FIXED_IOVA, MAP_WRITEABLE, MAP_READABLE = 1, 2, 4
EDU = ("0x1234", "0x11e8")
ECAP_SC = 1 << 7
PTE_SNP = 1 << 11
PAGE = mmap.PAGESIZE
SYS_PCI = "/sys/bus/pci/devices"
INTEL_DEBUGFS = "/sys/kernel/debug/iommu/intel"


def errno_name(code: int) -> str:
    # Python names 95 ENOTSUP; the kernel source says EOPNOTSUPP (same number on Linux).
    return "EOPNOTSUPP" if code == errno.EOPNOTSUPP else errno.errorcode.get(code, str(code))


def ioctl(fd: int, request: int, fmt: str, *fields) -> tuple[str | None, tuple]:
    """Issue one ioctl on a packed struct; return (errno name or None, the struct after the
    call).  A bytearray with mutate_flag=True makes the kernel's write-back visible."""
    buf = bytearray(struct.pack(fmt, struct.calcsize(fmt), *fields))
    try:
        fcntl.ioctl(fd, request, buf, True)
        err = None
    except OSError as e:
        err = errno_name(e.errno)
    return err, struct.unpack(fmt, buf)


def link_name(path: str) -> str | None:
    return os.path.basename(os.readlink(path)) if os.path.islink(path) else None


def edu_devices() -> list[dict]:
    devices = []
    for bdf in sorted(os.listdir(SYS_PCI)):
        d = f"{SYS_PCI}/{bdf}"
        if (read(f"{d}/vendor"), read(f"{d}/device")) != EDU:
            continue
        cdevs = sorted(os.listdir(f"{d}/vfio-dev")) if os.path.isdir(f"{d}/vfio-dev") else []
        devices.append({"bdf": bdf, "driver": link_name(f"{d}/driver"),
                        "iommu_group": link_name(f"{d}/iommu_group"),
                        "cdev": cdevs[0] if cdevs else None})
    return devices


def iommu_groups(devices: list[dict]) -> dict[str, list[str]]:
    """Members of every group that holds an edu device (shows what a bridge puts together)."""
    groups = sorted({d["iommu_group"] for d in devices if d["iommu_group"]}, key=int)
    return {g: sorted(os.listdir(f"/sys/kernel/iommu_groups/{g}/devices")) for g in groups}


def iommu_units() -> dict[str, dict]:
    units = {}
    base = "/sys/class/iommu"
    for name in sorted(os.listdir(base)) if os.path.isdir(base) else []:
        ecap = read(f"{base}/{name}/intel-iommu/ecap")
        units[name] = {"cap": read(f"{base}/{name}/intel-iommu/cap"), "ecap": ecap,
                       "ecap_sc": bool(int(ecap, 16) & ECAP_SC) if ecap else None}
    return units


def page_table_dump(bdf: str, max_lines: int = 8) -> dict:
    """The Intel debugfs dump of the device's second-level page table.

    Data lines look like "0x0000000000100 |\t<PML5E>\t<PML4E>\t<PDPE>\t<PDE>\t<PTE>": the last
    entry on the line is the leaf; SNP is its bit 11."""
    text = read(f"{INTEL_DEBUGFS}/{bdf}/domain_translation_struct")
    if text is None:
        return {"exists": False}
    lines = text.splitlines()
    leaves = []
    for line in lines:
        pfn, bar, entries = line.partition("|")
        if not bar or not pfn.strip().startswith("0x"):
            continue
        leaf = int(entries.split()[-1], 16)
        leaves.append({"iova_pfn": pfn.strip(), "pte": f"{leaf:#x}", "snp": bool(leaf & PTE_SNP)})
    return {"exists": True, "lines": lines[:max_lines], "leaves": leaves,
            "snp": sorted({leaf["snp"] for leaf in leaves})}


def anon_buffer(length: int) -> tuple[mmap.mmap, int]:
    """A private anonymous mapping and its user address (IOAS_MAP pins these pages)."""
    buf = mmap.mmap(-1, length, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    buf.write(b"\xa5" * length)  # fault the pages in
    return buf, ctypes.addressof(ctypes.c_char.from_buffer(buf))


def iommufd_sequence(devices: list[dict], keep: list) -> dict:
    """Bind and attach every device to one IOAS, map 2 pages, read HW info, try to destroy the
    HWPT in use.  Bind everything first so ids come out as ioas=1, devices 2.., HWPT next."""
    steps = []
    out: dict = {"steps": steps}
    iommufd = os.open("/dev/iommu", os.O_RDWR)
    keep.append(iommufd)
    err, (_, _, ioas) = ioctl(iommufd, IOMMU_IOAS_ALLOC, IOAS_ALLOC, 0, 0)
    steps.append({"op": "ioas_alloc", "errno": err, "ioas_id": ioas})
    out["ioas_id"] = ioas
    bound = []
    for dev in devices:
        if not dev["cdev"]:
            continue
        fd = os.open(f"/dev/vfio/devices/{dev['cdev']}", os.O_RDWR)
        keep.append(fd)
        err, (_, _, _, dev_id) = ioctl(fd, VFIO_DEVICE_BIND_IOMMUFD, BIND, 0, iommufd, 0)
        steps.append({"op": "bind", "bdf": dev["bdf"], "errno": err, "dev_id": dev_id})
        bound.append((dev["bdf"], fd, dev_id))
    out["pt_ids"] = {}
    for bdf, fd, _ in bound:
        err, (_, _, pt_id) = ioctl(fd, VFIO_DEVICE_ATTACH_IOMMUFD_PT, ATTACH, 0, ioas)
        steps.append({"op": "attach", "bdf": bdf, "pt": ioas, "errno": err, "pt_id": pt_id})
        out["pt_ids"][bdf] = pt_id if err is None else None
    buf, va = anon_buffer(2 * PAGE)
    keep.append(buf)
    iova = 0x100000
    err, fields = ioctl(iommufd, IOMMU_IOAS_MAP, IOAS_MAP,
                        MAP_FIXED_IOVA | MAP_READABLE | MAP_WRITEABLE, ioas, 0, va, 2 * PAGE, iova)
    steps.append({"op": "map", "ioas": ioas, "iova": hex(iova), "length": 2 * PAGE,
                  "errno": err, "iova_out": hex(fields[-1])})
    if bound:
        bdf, _, dev_id = bound[0]
        vtd = ctypes.create_string_buffer(struct.calcsize(HW_INFO_VTD))
        err, f = ioctl(iommufd, IOMMU_GET_HW_INFO, HW_INFO, 0, dev_id, len(vtd),
                       ctypes.addressof(vtd), 0, 0, 0)
        vflags, _, cap_reg, ecap_reg = struct.unpack(HW_INFO_VTD, vtd.raw)
        out["hw_info"] = {"bdf": bdf, "errno": err, "data_len": f[3], "out_data_type": f[5],
                          "out_max_pasid_log2": f[6], "out_capabilities": f[7],
                          "vtd_flags": vflags, "cap_reg": hex(cap_reg), "ecap_reg": hex(ecap_reg),
                          "ecap_sc": bool(ecap_reg & ECAP_SC)}
        steps.append({"op": "hw_info", **out["hw_info"]})
    out["page_tables"] = {bdf: page_table_dump(bdf) for bdf, _, _ in bound}
    hwpts = sorted({pt for pt in out["pt_ids"].values() if pt})
    for hwpt in hwpts:  # in use by an attached device: expect EBUSY
        err, _ = ioctl(iommufd, IOMMU_DESTROY, DESTROY, hwpt)
        steps.append({"op": "destroy", "id": hwpt, "errno": err})
    err, _ = ioctl(iommufd, IOMMU_DESTROY, DESTROY, ioas)  # referenced by the HWPTs / mapping
    steps.append({"op": "destroy", "id": ioas, "errno": err})
    return out


def mock_sequence(keep: list) -> dict:
    """IOMMU_TEST_OP_MOCK_DOMAIN on a fresh /dev/iommu fd: a mock device + HWPT on an IOAS."""
    steps = []
    iommufd = os.open("/dev/iommu", os.O_RDWR)
    keep.append(iommufd)
    err, (_, _, ioas) = ioctl(iommufd, IOMMU_IOAS_ALLOC, IOAS_ALLOC, 0, 0)
    steps.append({"op": "ioas_alloc", "errno": err, "ioas_id": ioas})
    err, f = ioctl(iommufd, IOMMU_TEST_CMD, TEST_CMD, TEST_OP_MOCK_DOMAIN, ioas, 0, bytes(48), 0)
    stdev, hwpt, idev = struct.unpack_from("<III", f[4])
    steps.append({"op": "mock_domain", "errno": err, "stdev_id": stdev, "hwpt_id": hwpt,
                  "idev_id": idev})
    buf, va = anon_buffer(2 * PAGE)
    keep.append(buf)
    err, _ = ioctl(iommufd, IOMMU_IOAS_MAP, IOAS_MAP,
                   MAP_FIXED_IOVA | MAP_READABLE | MAP_WRITEABLE, ioas, 0, va, 2 * PAGE,
                   MOCK_APERTURE_START)
    steps.append({"op": "map", "iova": hex(MOCK_APERTURE_START), "errno": err})
    if hwpt:
        err, _ = ioctl(iommufd, IOMMU_DESTROY, DESTROY, hwpt)
        steps.append({"op": "destroy", "id": hwpt, "errno": err})
    return {"steps": steps}


def kmsg_open() -> int | None:
    """/dev/kmsg positioned after the last record, to collect what the probe makes the kernel
    log (the console hides it: /init sets the console loglevel to 1)."""
    try:
        fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return None
    os.lseek(fd, 0, os.SEEK_END)
    return fd


def kmsg_read(fd: int | None) -> list[str]:
    """Messages logged since kmsg_open(), as "<priority> <text>"."""
    messages = []
    while fd is not None:
        try:
            record = os.read(fd, 8192).decode(errors="replace")
        except BlockingIOError:
            break
        except OSError as e:  # EPIPE: records were overwritten while we ran
            messages.append(f"? kmsg read: {errno_name(e.errno)}")
            continue
        prefix, _, text = record.partition(";")
        messages.append(f"{int(prefix.split(',')[0]) & 7} {text.splitlines()[0] if text else ''}")
    return messages


def main(argv: list[str]) -> int:
    kmsg = kmsg_open()
    job = {}
    if len(argv) > 1:
        with open(argv[1]) as f:
            job = json.load(f)
    uname = os.uname()
    devices = edu_devices()
    result = {
        "job": job,
        "kernel": {"release": uname.release, "version": uname.version},
        "vfio_devices": sorted(os.listdir("/dev/vfio/devices"))
        if os.path.isdir("/dev/vfio/devices") else [],
        "edu_devices": devices,
        "iommu_groups": iommu_groups(devices),
        "iommu_units": iommu_units(),
        "intel_debugfs": os.path.isdir(INTEL_DEBUGFS),
    }
    keep: list = []  # fds and buffers stay alive until the process exits
    for name, seq in (("iommufd", lambda: iommufd_sequence(devices, keep)),
                      ("mock", lambda: mock_sequence(keep))):
        try:
            result[name] = seq()
        except OSError as e:  # e.g. no /dev/iommu: report, don't crash
            result[name] = {"error": f"{errno_name(e.errno)}: {e}"}
    result["kernel_log"] = kmsg_read(kmsg)
    json.dump(result, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
