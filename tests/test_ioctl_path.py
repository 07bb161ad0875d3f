"""Host.ioctl decodes the caller's buffer the same whatever its Python type: a ctypes struct, a
bytearray of the struct's size (the client's fast builds), a longer or a shorter one."""
import ctypes
import errno

import pytest

from pyiommufd import uapi
from pyiommufd.client import Iommufd, VfioDevice, emulated
from pyiommufd.kernel.err import KernelErr
from pyiommufd.system import System

PAGE = 4096


@pytest.fixture
def machine():
    emu = emulated(System.simple("intel", devices={"gpu": False, "nic": True}), "linux-6.12")
    ifd = Iommufd(emu.transport)
    ioas = ifd.ioas_alloc()
    nic = VfioDevice(emu.transport, emu.cdev_path("nic"))
    nic.bind(ifd)
    return emu, ifd, ioas, nic


def _map_struct(ioas_id, uva, iova=0, flags=uapi.IOMMU_IOAS_MAP_READABLE | uapi.IOMMU_IOAS_MAP_WRITEABLE):
    return uapi.iommu_ioas_map(size=40, flags=flags, ioas_id=ioas_id, user_va=uva, length=PAGE, iova=iova)


def test_ctypes_and_bytearray_get_the_same_answer(machine):
    emu, ifd, ioas, _ = machine
    host, uva = emu.host, emu.transport.mmap(PAGE)
    as_ctypes = _map_struct(ioas.id, uva)
    host.ioctl(ifd.fd, uapi.IOMMU_IOAS_MAP, as_ctypes)
    as_bytes = bytearray(_map_struct(ioas.id, uva))
    host.ioctl(ifd.fd, uapi.IOMMU_IOAS_MAP, as_bytes)
    assert as_ctypes.iova and uapi.iommu_ioas_map.from_buffer_copy(as_bytes).iova == as_ctypes.iova + PAGE
    longer = bytearray(_map_struct(ioas.id, uva)) + b"\xaa" * 8   # size says 40: the tail is not the kernel's
    host.ioctl(ifd.fd, uapi.IOMMU_IOAS_MAP, longer)
    assert longer[40:] == b"\xaa" * 8 and uapi.iommu_ioas_map.from_buffer_copy(longer).iova == as_ctypes.iova + 2 * PAGE


def test_size_checks_hold_for_a_bytearray(machine):
    emu, ifd, ioas, nic = machine
    host = emu.host
    short = bytearray(uapi.iommu_hwpt_alloc_v6_6(size=24, dev_id=nic.dev_id, pt_id=ioas.id))
    host.ioctl(ifd.fd, uapi.IOMMU_HWPT_ALLOC, short)        # the 6.6 struct on a 6.12 kernel: accepted
    assert len(short) == 24 and uapi.iommu_hwpt_alloc_v6_6.from_buffer_copy(short).out_hwpt_id
    too_small = bytearray(uapi.iommu_hwpt_alloc(size=20, dev_id=nic.dev_id, pt_id=ioas.id))
    with pytest.raises(KernelErr) as e:
        host.ioctl(ifd.fd, uapi.IOMMU_HWPT_ALLOC, too_small)
    assert e.value.errno == errno.EINVAL
    tail = bytearray(uapi.iommu_hwpt_alloc(size=56, dev_id=nic.dev_id, pt_id=ioas.id)) + bytes(8)
    tail[52] = 1
    with pytest.raises(KernelErr) as e:
        host.ioctl(ifd.fd, uapi.IOMMU_HWPT_ALLOC, tail)
    assert e.value.errno == errno.E2BIG and uapi.iommu_hwpt_alloc.from_buffer_copy(tail).out_hwpt_id == 0
    with pytest.raises(KernelErr) as e:
        host.ioctl(ifd.fd, uapi.IOMMU_IOAS_MAP, bytearray(8))   # size 0
    assert e.value.errno == errno.EINVAL


def test_a_failed_ioctl_writes_nothing_back_unless_it_responded(machine):
    emu, ifd, ioas, _ = machine
    host = emu.host
    buf = bytearray(_map_struct(ioas.id, 0, flags=1 << 9))
    before = bytes(buf)
    with pytest.raises(KernelErr) as e:
        host.ioctl(ifd.fd, uapi.IOMMU_IOAS_MAP, buf)
    assert e.value.errno == errno.EOPNOTSUPP and bytes(buf) == before
    # IOAS_IOVA_RANGES with no room: EMSGSIZE after the struct is copied back (num_iovas, alignment)
    ranges = bytearray(uapi.iommu_ioas_iova_ranges(size=32, ioas_id=ioas.id, num_iovas=0))
    with pytest.raises(KernelErr) as e:
        host.ioctl(ifd.fd, uapi.IOMMU_IOAS_IOVA_RANGES, ranges)
    got = uapi.iommu_ioas_iova_ranges.from_buffer_copy(ranges)
    assert e.value.errno == errno.EMSGSIZE and got.num_iovas >= 1 and got.out_iova_alignment == 1


def test_cdev_attach_writes_back_only_pt_id(machine):
    emu, ifd, ioas, nic = machine
    buf = bytearray(uapi.vfio_device_attach_iommufd_pt(argsz=12, pt_id=ioas.id)) + b"\x55" * 4
    emu.host.ioctl(nic.fd, uapi.VFIO_DEVICE_ATTACH_IOMMUFD_PT, buf)
    got = uapi.vfio_device_attach_iommufd_pt.from_buffer_copy(buf)
    assert got.pt_id != ioas.id and got.argsz == 12 and buf[12:] == b"\x55" * 4   # the auto HWPT's id
    with pytest.raises(KernelErr) as e:
        emu.host.ioctl(nic.fd, uapi.VFIO_DEVICE_DETACH_IOMMUFD_PT, bytearray(4))
    assert e.value.errno == errno.EFAULT
    emu.host.ioctl(nic.fd, uapi.VFIO_DEVICE_DETACH_IOMMUFD_PT, ctypes.create_string_buffer(b"\x08", 8))
