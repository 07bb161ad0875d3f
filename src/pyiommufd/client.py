"""The client API a VMM author calls.  Identical against the emulator and a real kernel:
only the transport differs.

    from pyiommufd.client import Iommufd, VfioDevice, emulated
    from pyiommufd.system import System
    emu = emulated(System.simple(devices={"gpu": False, "nic": True}))
    with Iommufd(emu.transport) as iommufd:
        ioas = iommufd.ioas_alloc()
        gpu = VfioDevice(emu.transport, emu.cdev_path("gpu"))
        gpu.bind(iommufd)
        hwpt_id = gpu.attach(ioas.id)
"""
from __future__ import annotations

import ctypes
from dataclasses import dataclass

from . import uapi
from .errors import StateError
from .profiles import DEFAULT_PROFILE, Profile, get_profile

U64_MAX = (1 << 64) - 1


_HEADERS: dict[type, dict] = {}   # struct -> its leading size field set to sizeof: {"size": n} / {"argsz": n}


def _new(cls, **fields):
    header = _HEADERS.get(cls)
    if header is None:
        names = [f[0] for f in cls._fields_]
        header = _HEADERS[cls] = {"size" if "size" in names else "argsz": ctypes.sizeof(cls)}
    return cls(**fields, **header)


# The hot ioctls build their struct as bytes (uapi.Layout: a precompiled struct.Struct of the
# same layout, several times cheaper than a ctypes instance) and read the answer back from them.
_IOAS_ALLOC = uapi.Layout(uapi.iommu_ioas_alloc)
_IOAS_ALLOC_ID = _IOAS_ALLOC.reader("out_ioas_id")
_DESTROY = uapi.Layout(uapi.iommu_destroy, "id")
_HWPT_ALLOC = uapi.Layout(uapi.iommu_hwpt_alloc, "flags", "dev_id", "pt_id", "data_type", "data_len", "data_uptr")
_HWPT_ALLOC_ID = _HWPT_ALLOC.reader("out_hwpt_id")
_OPTION = uapi.Layout(uapi.iommu_option, "option_id", "op", "object_id", "val64")
_OPTION_VAL64 = _OPTION.reader("val64")
_VFIO_IOAS = uapi.Layout(uapi.iommu_vfio_ioas, "ioas_id", "op")
_VFIO_IOAS_ID = _VFIO_IOAS.reader("ioas_id")
_MAP = uapi.Layout(uapi.iommu_ioas_map, "flags", "ioas_id", "user_va", "length", "iova")
_MAP_IOVA = _MAP.reader("iova")
_UNMAP = uapi.Layout(uapi.iommu_ioas_unmap, "ioas_id", "iova", "length")
_UNMAP_LENGTH = _UNMAP.reader("length")
_BIND = uapi.Layout(uapi.vfio_device_bind_iommufd, "iommufd")
_BIND_DEVID = _BIND.reader("out_devid")
_ATTACH = uapi.Layout(uapi.vfio_device_attach_iommufd_pt, "pt_id")
_ATTACH_PT = _ATTACH.reader("pt_id")
_DETACH = uapi.Layout(uapi.vfio_device_detach_iommufd_pt)


class Iommufd:
    """An open /dev/iommu: one iommufd_ctx."""

    __slots__ = ("transport", "fd")
    _fixed = ("transport",)   # never rebound (snapshot.fixed_slots)

    def __init__(self, transport, path: str = "/dev/iommu"):
        self.transport = transport
        self.fd: int | None = transport.open(path)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            self.transport.close(fd)

    def _fd(self) -> int:
        if self.fd is None:
            raise StateError("iommufd is closed (required: open)")
        return self.fd

    def ioctl(self, request: int, struct) -> int:
        return self.transport.ioctl(self._fd(), request, struct)

    def ioas_alloc(self) -> "Ioas":
        cmd = _IOAS_ALLOC.pack()
        self.ioctl(uapi.IOMMU_IOAS_ALLOC, cmd)
        return Ioas(self, _IOAS_ALLOC_ID(cmd))

    def destroy(self, obj_id: int) -> None:
        self.ioctl(uapi.IOMMU_DESTROY, _DESTROY.pack(obj_id))

    def hwpt_alloc(self, dev_id: int, pt_id: int, flags: int = 0, data_type: int = 0,
                   data: bytes | None = None) -> int:
        """IOMMU_HWPT_ALLOC; returns the new HWPT id."""
        if data:
            buf = ctypes.create_string_buffer(bytes(data), len(data))   # alive until the ioctl returns
            cmd = _HWPT_ALLOC.pack(flags, dev_id, pt_id, data_type, len(data), ctypes.addressof(buf))
        else:
            cmd = _HWPT_ALLOC.pack(flags, dev_id, pt_id, data_type, 0, 0)
        self.ioctl(uapi.IOMMU_HWPT_ALLOC, cmd)
        return _HWPT_ALLOC_ID(cmd)

    def hw_info(self, dev_id: int, data_len: int = ctypes.sizeof(uapi.iommu_hw_info_vtd)) -> "HwInfo":
        """IOMMU_GET_HW_INFO; Intel data is decoded into cap/ecap and snoop_control."""
        addr = self.transport.mmap(data_len)
        cmd = _new(uapi.iommu_hw_info, dev_id=dev_id, data_len=data_len, data_uptr=addr)
        self.ioctl(uapi.IOMMU_GET_HW_INFO, cmd)
        raw = _read_user(self.transport, addr, min(data_len, cmd.data_len))
        return HwInfo(cmd.out_data_type, raw, cmd.out_capabilities, cmd.data_len)

    def vfio_ioas(self, op: int, ioas_id: int = 0) -> int:
        cmd = _VFIO_IOAS.pack(ioas_id, op)
        self.ioctl(uapi.IOMMU_VFIO_IOAS, cmd)
        return _VFIO_IOAS_ID(cmd)

    def option(self, option_id: int, op: int, val64: int = 0, object_id: int = 0) -> int:
        """IOMMU_OPTION; returns val64 as the kernel left it (the value, for OP_GET)."""
        cmd = _OPTION.pack(option_id, op, object_id, val64)
        self.ioctl(uapi.IOMMU_OPTION, cmd)
        return _OPTION_VAL64(cmd)


def _read_user(transport, addr: int, length: int) -> bytes:
    mem = getattr(getattr(transport, "host", None), "mem", None)
    if mem is not None:
        return mem.read(addr, length)
    return ctypes.string_at(addr, length)


def _write_user(transport, addr: int, data: bytes) -> None:
    mem = getattr(getattr(transport, "host", None), "mem", None)
    if mem is not None:
        mem.write(addr, data)
    else:
        ctypes.memmove(addr, bytes(data), len(data))


@dataclass(frozen=True)
class HwInfo:
    data_type: int
    data: bytes
    capabilities: int
    kernel_data_len: int

    @property
    def vtd(self) -> uapi.iommu_hw_info_vtd | None:
        if self.data_type != uapi.IOMMU_HW_INFO_TYPE_INTEL_VTD or len(self.data) < ctypes.sizeof(uapi.iommu_hw_info_vtd):
            return None
        return uapi.iommu_hw_info_vtd.from_buffer_copy(self.data)

    @property
    def snoop_control(self) -> bool | None:
        """Intel ECAP.SC (bit 7): whether the device's unit can enforce cache coherency."""
        v = self.vtd
        return None if v is None else bool(v.ecap_reg & uapi.VTD_ECAP_SC)


class Ioas:
    def __init__(self, iommufd: Iommufd, ioas_id: int):
        self.iommufd = iommufd
        self.id = ioas_id

    def map(self, iova: int | None, length: int, *, readable: bool = True, writeable: bool = True,
            user_va: int | None = None, flags: int | None = None) -> int:
        """IOMMU_IOAS_MAP of fresh anonymous memory (or ``user_va``); ``iova=None`` lets the
        kernel choose.  Returns the IOVA used."""
        if user_va is None:
            user_va = self.iommufd.transport.mmap(length)
        if flags is None:
            flags = ((uapi.IOMMU_IOAS_MAP_FIXED_IOVA if iova is not None else 0)
                     | (uapi.IOMMU_IOAS_MAP_READABLE if readable else 0)
                     | (uapi.IOMMU_IOAS_MAP_WRITEABLE if writeable else 0))
        cmd = _MAP.pack(flags, self.id, user_va, length, iova or 0)
        self.iommufd.ioctl(uapi.IOMMU_IOAS_MAP, cmd)
        return _MAP_IOVA(cmd)

    def unmap(self, iova: int, length: int) -> int:
        """IOMMU_IOAS_UNMAP; returns the bytes unmapped (iova 0, length U64_MAX: everything)."""
        cmd = _UNMAP.pack(self.id, iova, length)
        self.iommufd.ioctl(uapi.IOMMU_IOAS_UNMAP, cmd)
        return _UNMAP_LENGTH(cmd)

    def copy_from(self, src: "Ioas", src_iova: int, length: int, iova: int | None = None, *,
                  readable: bool = True, writeable: bool = True) -> int:
        """IOMMU_IOAS_COPY of [src_iova, src_iova+length) of ``src`` into this IOAS (the same
        pages, no new pin); ``iova=None`` lets the kernel choose.  Returns the IOVA used."""
        flags = ((uapi.IOMMU_IOAS_MAP_FIXED_IOVA if iova is not None else 0)
                 | (uapi.IOMMU_IOAS_MAP_READABLE if readable else 0)
                 | (uapi.IOMMU_IOAS_MAP_WRITEABLE if writeable else 0))
        cmd = _new(uapi.iommu_ioas_copy, flags=flags, dst_ioas_id=self.id, src_ioas_id=src.id, length=length,
                   dst_iova=iova or 0, src_iova=src_iova)
        self.iommufd.ioctl(uapi.IOMMU_IOAS_COPY, cmd)
        return cmd.dst_iova

    def iova_ranges(self) -> tuple[list[tuple[int, int]], int]:
        """IOMMU_IOAS_IOVA_RANGES: the usable (start, last) ranges and the IOVA alignment.
        The array grows until it holds every range (EMSGSIZE says it was short)."""
        from .errors import IoctlError
        transport = self.iommufd.transport
        n = 8
        while True:
            addr = transport.mmap(16 * n)
            cmd = _new(uapi.iommu_ioas_iova_ranges, ioas_id=self.id, num_iovas=n, allowed_iovas=addr)
            try:
                self.iommufd.ioctl(uapi.IOMMU_IOAS_IOVA_RANGES, cmd)
            except IoctlError as e:
                if e.errno != uapi.errno_value("EMSGSIZE"):
                    raise
                n = max(2 * n, cmd.num_iovas)
                continue
            raw = _read_user(transport, addr, 16 * cmd.num_iovas)
            ranges = [uapi.iommu_iova_range.from_buffer_copy(raw, 16 * i) for i in range(cmd.num_iovas)]
            return [(r.start, r.last) for r in ranges], cmd.out_iova_alignment

    def allow_iovas(self, ranges) -> None:
        """IOMMU_IOAS_ALLOW_IOVAS: automatic IOVAs come only from these (start, last) ranges
        from now on; an empty list lifts the restriction."""
        transport = self.iommufd.transport
        ranges = list(ranges)
        addr = transport.mmap(16 * max(len(ranges), 1))
        _write_user(transport, addr, b"".join(bytes(uapi.iommu_iova_range(s, l)) for s, l in ranges))
        cmd = _new(uapi.iommu_ioas_allow_iovas, ioas_id=self.id, num_iovas=len(ranges), allowed_iovas=addr)
        self.iommufd.ioctl(uapi.IOMMU_IOAS_ALLOW_IOVAS, cmd)

    @property
    def huge_pages(self) -> bool:
        """IOMMU_OPTION_HUGE_PAGES of this IOAS (OP_GET)."""
        return bool(self.iommufd.option(uapi.IOMMU_OPTION_HUGE_PAGES, uapi.IOMMU_OPTION_OP_GET, object_id=self.id))

    @huge_pages.setter
    def huge_pages(self, on: bool) -> None:
        self.iommufd.option(uapi.IOMMU_OPTION_HUGE_PAGES, uapi.IOMMU_OPTION_OP_SET, int(on), object_id=self.id)


class VfioDevice:
    """A VFIO device cdev (/dev/vfio/devices/vfioN), 6.6+."""

    __slots__ = ("transport", "path", "fd", "dev_id")
    _fixed = ("transport", "path")   # never rebound (snapshot.fixed_slots)

    def __init__(self, transport, path: str):
        self.transport = transport
        self.path = path
        self.fd: int | None = transport.open(path)
        self.dev_id: int | None = None

    def _fd(self) -> int:
        if self.fd is None:
            raise StateError(f"{self.path} is closed (required: open)")
        return self.fd

    def bind(self, iommufd: Iommufd) -> int:
        cmd = _BIND.pack(iommufd._fd())
        self.transport.ioctl(self._fd(), uapi.VFIO_DEVICE_BIND_IOMMUFD, cmd)
        self.dev_id = _BIND_DEVID(cmd)
        return self.dev_id

    def attach(self, pt_id: int) -> int:
        """VFIO_DEVICE_ATTACH_IOMMUFD_PT: an IOAS id runs the kernel's auto-domain search,
        a HWPT id attaches there; on an attached device this is a replace.  Returns the pt id used."""
        cmd = _ATTACH.pack(pt_id)
        self.transport.ioctl(self._fd(), uapi.VFIO_DEVICE_ATTACH_IOMMUFD_PT, cmd)
        return _ATTACH_PT(cmd)

    replace = attach

    def detach(self) -> None:
        self.transport.ioctl(self._fd(), uapi.VFIO_DEVICE_DETACH_IOMMUFD_PT, _DETACH.pack())

    def close(self) -> None:
        """Closing the cdev unbinds the device (detaching it first)."""
        if self.fd is not None:
            fd, self.fd = self.fd, None
            self.dev_id = None
            self.transport.close(fd)


class VfioGroup:
    """A VFIO group (/dev/vfio/<group>) with an iommufd as its container: the path
    devices take into iommufd before 6.6."""

    def __init__(self, transport, path: str):
        self.transport = transport
        self.path = path
        self.fd: int | None = transport.open(path)

    def set_container(self, iommufd: Iommufd) -> None:
        self.transport.ioctl(self.fd, uapi.VFIO_GROUP_SET_CONTAINER, uapi.vfio_group_fd(iommufd._fd()))

    def get_device_fd(self, name: str) -> int:
        """Opens the device: binds it and attaches it to the iommufd's compat IOAS."""
        buf = ctypes.create_string_buffer(name.encode())
        return self.transport.ioctl(self.fd, uapi.VFIO_GROUP_GET_DEVICE_FD, buf)

    def close(self) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            self.transport.close(fd)


class Emulated:
    """An emulated machine: its host kernel and the transport to reach it."""

    __slots__ = ("profile", "system", "host", "transport")
    _fixed = __slots__   # never rebound (snapshot.fixed_slots)

    def __init__(self, system, profile: Profile | str = DEFAULT_PROFILE):
        from .kernel.host import Host
        from .transport import EmulatedTransport
        self.profile = get_profile(profile) if isinstance(profile, str) else profile
        self.system = system
        self.host = Host(system, self.profile)
        self.transport = EmulatedTransport(self.host)

    def cdev_path(self, device: str) -> str:
        return f"/dev/vfio/devices/vfio{self.host.devices[device].cdev}"

    def group_path(self, device: str) -> str:
        return f"/dev/vfio/{self.host.devices[device].group}"


def emulated(system, profile: Profile | str = DEFAULT_PROFILE) -> Emulated:
    return Emulated(system, profile)
