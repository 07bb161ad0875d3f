"""Transports: where an ioctl goes.  Client code builds a uAPI struct and calls
``transport.ioctl(fd, request, struct)``; the struct is the caller's memory, so the
kernel's write-back lands in it either way.  Errors are ``IoctlError`` (an OSError).

* ``EmulatedTransport`` hands the raw buffer to an emulated host kernel
  (kernel.host.Host), which decodes it as Linux would.
* ``RealTransport`` calls fcntl.ioctl on /dev/iommu and VFIO cdevs.
"""
from __future__ import annotations

import ctypes
import errno
import os
from typing import Protocol

from .errors import EnvironmentMissing, IoctlError
from .kernel.err import KernelErr


class Transport(Protocol):
    def open(self, path: str) -> int: ...
    def close(self, fd: int) -> None: ...
    def ioctl(self, fd: int, request: int, buf) -> int: ...
    def mmap(self, length: int) -> int: ...


class EmulatedTransport:
    """The uAPI seam to the emulator: the same bytes a real kernel would see."""

    __slots__ = ("host",)
    _fixed = __slots__   # never rebound (snapshot.fixed_slots)

    def __init__(self, host):
        self.host = host

    def _call(self, fn, *args, request=None, buf=None):
        try:
            return fn(*args)
        except KernelErr as e:
            raise IoctlError(e.errno, request, buf, e.detail) from None

    def open(self, path: str) -> int:
        return self._call(self.host.open, path)

    def close(self, fd: int) -> None:
        self._call(self.host.close, fd)

    def ioctl(self, fd: int, request: int, buf) -> int:
        try:   # _call, inlined: the hot path
            return self.host.ioctl(fd, request, buf)
        except KernelErr as e:
            raise IoctlError(e.errno, request, buf, e.detail) from None

    def mmap(self, length: int) -> int:
        return self._call(self.host.mem.mmap, length)

    # Emulator-only events (no uAPI on this project's machines to drive them for real).
    def kvm_file(self, op: str, fd: int) -> None:
        self._call(self.host.kvm_file, op, fd)

    def dma(self, device: str, iova: int, length: int, snoop: bool) -> dict:
        return self._call(self.host.dma, device, iova, length, snoop)


class RealTransport:
    """ioctl on real files.  Every fd it opens is closed by ``close_all`` (and on exit
    of a ``with`` block), whatever happened in between."""

    def __init__(self):
        self.fds: set[int] = set()
        self._maps: list = []
        self._views: list = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close_all()

    def open(self, path: str) -> int:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            if path == "/dev/iommu":
                raise EnvironmentMissing("/dev/iommu does not exist: this kernel has no iommufd "
                                         "(CONFIG_IOMMUFD) or the module is not loaded (modprobe iommufd)") from None
            raise
        except PermissionError:
            raise EnvironmentMissing(f"no permission to open {path}: run as root or grant access") from None
        self.fds.add(fd)
        return fd

    def close(self, fd: int) -> None:
        self.fds.discard(fd)
        os.close(fd)

    def close_all(self) -> None:
        """Close every fd this transport opened (newest first: device cdevs before the
        /dev/iommu they are bound to), then release the buffers handed out by ``mmap``."""
        for fd in sorted(self.fds, reverse=True):
            try:
                os.close(fd)
            except OSError:
                pass
        self.fds.clear()
        self._views.clear()   # the ctypes views pin the mmaps' buffers: drop them first
        for m in self._maps:
            try:
                m.close()
            except (BufferError, ValueError):
                pass          # still exported by a caller's view: freed when that goes
        self._maps.clear()

    def ioctl(self, fd: int, request: int, buf) -> int:
        import fcntl
        try:
            return fcntl.ioctl(fd, request, buf, True)
        except OSError as e:
            raise IoctlError(e.errno, request, buf) from None

    # Buffers larger than this are not reserved: a scenario asking to map more (to see the
    # kernel's answer to a huge length) gets the address of a small buffer, which is what the
    # kernel's length and IOVA checks see before any page is touched.
    MMAP_LIMIT = 1 << 30

    def mmap(self, length: int) -> int:
        """Anonymous private memory for IOAS_MAP (page-aligned), kept until ``close_all``."""
        import mmap
        size = length if 0 < length <= self.MMAP_LIMIT else mmap.PAGESIZE
        m = mmap.mmap(-1, size, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        view = ctypes.c_char.from_buffer(m)
        self._maps.append(m)
        self._views.append(view)
        return ctypes.addressof(view)

    def kvm_file(self, op: str, fd: int) -> None:
        raise EnvironmentMissing("KVM is not driven on a real host by this tool (no KVM on these machines)")

    def dma(self, device: str, iova: int, length: int, snoop: bool) -> dict:
        raise IoctlError(errno.EOPNOTSUPP, None, None, "DMA events are emulator-only")
