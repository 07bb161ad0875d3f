"""The iommufd selftest mock on the model, in process: IOMMU_TEST_CMD and the domain uAPI it
exercises, driven through Host.ioctl with the real structs.  Each expectation is read from
drivers/iommu/iommufd/{selftest,hw_pagetable,device,fault,io_pagetable,iova_bitmap}.c (6.12.117)."""
import ctypes
import errno

import pytest

from pyiommufd import uapi
from pyiommufd.client import emulated
from pyiommufd.kernel.err import KernelErr
from pyiommufd.system import System

T = uapi
TEST_CMD_SIZE = ctypes.sizeof(T.iommu_test_cmd)


class Mock:
    """An emulated machine with no devices but the ones IOMMU_TEST_OP_MOCK_DOMAIN makes."""

    def __init__(self, profile="linux-6.12"):
        self.host = emulated(System.simple("mock", devices={}), profile).host
        self.fd = self.host.open("/dev/iommu")

    def ioctl(self, request, cmd):
        if hasattr(cmd, "size") and not cmd.size:
            cmd.size = ctypes.sizeof(cmd)
        self.host.ioctl(self.fd, request, cmd)
        return cmd

    def err(self, request, cmd) -> int:
        with pytest.raises(KernelErr) as e:
            self.ioctl(request, cmd)
        return e.value.errno

    def test(self, op, obj_id=0, **union):
        cmd = T.iommu_test_cmd(size=TEST_CMD_SIZE, op=op, id=obj_id)
        for member, fields in union.items():
            for k, v in fields.items():
                setattr(getattr(cmd, member), k, v)
        return cmd

    def ioas(self) -> int:
        return self.ioctl(T.IOMMU_IOAS_ALLOC, T.iommu_ioas_alloc()).out_ioas_id

    def mock_domain(self, pt_id, dev_flags=None):
        if dev_flags is None:
            cmd = self.ioctl(T.IOMMU_TEST_CMD, self.test(T.IOMMU_TEST_OP_MOCK_DOMAIN, pt_id))
        else:
            cmd = self.ioctl(T.IOMMU_TEST_CMD, self.test(T.IOMMU_TEST_OP_MOCK_DOMAIN_FLAGS, pt_id,
                                                         mock_domain_flags={"dev_flags": dev_flags}))
        return cmd.mock_domain.out_stdev_id, cmd.mock_domain.out_hwpt_id, cmd.mock_domain.out_idev_id

    def map(self, ioas_id, iova, length, uptr=None):
        uptr = uptr if uptr is not None else self.host.mem.mmap(length)
        self.ioctl(T.IOMMU_IOAS_MAP, T.iommu_ioas_map(
            ioas_id=ioas_id, user_va=uptr, length=length, iova=iova,
            flags=T.IOMMU_IOAS_MAP_FIXED_IOVA | T.IOMMU_IOAS_MAP_READABLE | T.IOMMU_IOAS_MAP_WRITEABLE))
        return uptr

    def hwpt_alloc(self, dev_id, pt_id, flags=0, data_type=0, data=None, data_len=None, fault_id=0):
        """struct iommu_hwpt_alloc; ``data`` is copied to user memory (data_len defaults to its size)."""
        uptr = 0
        if data is not None:
            raw = bytes(data)
            uptr = self.host.mem.mmap(len(raw))
            self.host.mem.write(uptr, raw)
            data_len = len(raw) if data_len is None else data_len
        return T.iommu_hwpt_alloc(flags=flags, dev_id=dev_id, pt_id=pt_id, data_type=data_type,
                                  data_len=data_len or 0, data_uptr=uptr, fault_id=fault_id)

    def destroy(self, obj_id):
        self.ioctl(T.IOMMU_DESTROY, T.iommu_destroy(id=obj_id))


@pytest.fixture
def m():
    return Mock()


# -- IOMMU_TEST_CMD decoding --------------------------------------------------------------------
def test_test_cmd_size_rules(m):
    """IOCTL_OP(IOMMU_TEST_CMD, ..., last): min_size 68 (EINVAL below), E2BIG for a non-zero tail
    past the 72-byte struct, a zero tail is fine; an unknown op is EOPNOTSUPP (the switch's default)."""
    ioas = m.ioas()
    buf = bytearray(bytes(m.test(T.IOMMU_TEST_OP_MOCK_DOMAIN, ioas)) + bytes(8))
    buf[0:4] = (67).to_bytes(4, "little")
    with pytest.raises(KernelErr) as e:
        m.host.ioctl(m.fd, T.IOMMU_TEST_CMD, buf)
    assert e.value.errno == errno.EINVAL
    buf[0:4], buf[72] = (80).to_bytes(4, "little"), 1
    with pytest.raises(KernelErr) as e:
        m.host.ioctl(m.fd, T.IOMMU_TEST_CMD, buf)
    assert e.value.errno == errno.E2BIG
    buf[72] = 0
    m.host.ioctl(m.fd, T.IOMMU_TEST_CMD, buf)
    out = T.iommu_test_cmd.from_buffer_copy(buf)
    assert (out.mock_domain.out_stdev_id, out.mock_domain.out_idev_id, out.mock_domain.out_hwpt_id) == (2, 3, 4)
    assert m.err(T.IOMMU_TEST_CMD, m.test(0)) == errno.EOPNOTSUPP
    assert m.err(T.IOMMU_TEST_CMD, m.test(99)) == errno.EOPNOTSUPP


@pytest.mark.parametrize("profile,op,present", [
    ("linux-6.6", T.IOMMU_TEST_OP_MOCK_DOMAIN_FLAGS, False), ("linux-6.7", T.IOMMU_TEST_OP_MOCK_DOMAIN_FLAGS, True),
    ("linux-6.7", T.IOMMU_TEST_OP_TRIGGER_IOPF, False), ("linux-6.12", T.IOMMU_TEST_OP_TRIGGER_IOPF, True)])
def test_test_ops_gated_by_release(profile, op, present):
    """An op newer than the profile's kernel answers the default case's EOPNOTSUPP."""
    m = Mock(profile)
    ioas = m.ioas()
    cmd = m.test(op, ioas)
    if present:
        if op == T.IOMMU_TEST_OP_TRIGGER_IOPF:   # no such device: the op ran and looked it up
            assert m.err(T.IOMMU_TEST_CMD, cmd) == errno.ENOENT
        else:
            m.ioctl(T.IOMMU_TEST_CMD, cmd)
    else:
        assert m.err(T.IOMMU_TEST_CMD, cmd) == errno.EOPNOTSUPP


# -- MOCK_DOMAIN -----------------------------------------------------------------------------------
def test_mock_domain_ids_auto_domain_and_aperture(m):
    """selftest object first, then the DEVICE, then the auto HWPT; a second mock device shares the
    auto domain; the IOAS gets the mock's 2 KiB alignment and the aperture 16M..2G-1."""
    ioas = m.ioas()
    assert m.mock_domain(ioas) == (2, 4, 3)
    stdev2, hwpt2, idev2 = m.mock_domain(ioas)
    assert (stdev2, hwpt2, idev2) == (5, 4, 6)
    ranges = m.host.mem.mmap(64)
    r = m.ioctl(T.IOMMU_IOAS_IOVA_RANGES, T.iommu_ioas_iova_ranges(ioas_id=ioas, num_iovas=4, allowed_iovas=ranges))
    assert r.out_iova_alignment == 2048 and r.num_iovas == 1
    only = T.iommu_iova_range.from_buffer_copy(m.host.mem.read(ranges, 16))
    assert (only.start, only.last) == (T.MOCK_APERTURE_START, T.MOCK_APERTURE_LAST)
    m.map(ioas, T.MOCK_APERTURE_START, 4096)
    assert m.err(T.IOMMU_IOAS_MAP, T.iommu_ioas_map(
        ioas_id=ioas, user_va=m.host.mem.mmap(4096), length=4096, iova=T.MOCK_APERTURE_START - 4096,
        flags=T.IOMMU_IOAS_MAP_FIXED_IOVA | T.IOMMU_IOAS_MAP_READABLE)) == errno.EINVAL
    assert sorted(m.host.mock_devs) == ["iommufd_mock0", "iommufd_mock1"]


def test_mock_domain_destroy_and_close(m):
    """The DEVICE is busy while its selftest object lives; destroying the object detaches,
    unbinds and frees the mock device (its ida id is reused) and the auto HWPT; a mock device
    holds no ctx reference, so closing the fd releases everything."""
    ioas = m.ioas()
    stdev, hwpt, idev = m.mock_domain(ioas)
    assert m.err(T.IOMMU_DESTROY, T.iommu_destroy(id=idev)) == errno.EBUSY
    assert m.err(T.IOMMU_DESTROY, T.iommu_destroy(id=ioas)) == errno.EBUSY
    m.destroy(stdev)
    ctx = m.host.ctxs[m.fd]
    assert sorted(ctx.objects) == [ioas] and not m.host.mock_devs
    m.mock_domain(ioas)
    assert list(m.host.mock_devs) == ["iommufd_mock0"]
    m.host.close(m.fd)
    assert not m.host.ctxs and not m.host.mock_devs


def test_mock_domain_onto_hwpt_and_errors(m):
    """cmd.id may be a HWPT (attach there) but not a DEVICE (EINVAL, device_change_pt); unknown ids
    ENOENT; unknown dev_flags EINVAL; every failure leaves no object and no mock device behind."""
    ioas = m.ioas()
    _, hwpt, idev = m.mock_domain(ioas)
    assert m.mock_domain(hwpt)[1] == hwpt
    before = sorted(m.host.ctxs[m.fd].objects)
    assert m.err(T.IOMMU_TEST_CMD, m.test(T.IOMMU_TEST_OP_MOCK_DOMAIN, idev)) == errno.EINVAL
    assert m.err(T.IOMMU_TEST_CMD, m.test(T.IOMMU_TEST_OP_MOCK_DOMAIN, 99)) == errno.ENOENT
    assert m.err(T.IOMMU_TEST_CMD, m.test(T.IOMMU_TEST_OP_MOCK_DOMAIN_FLAGS, ioas,
                                          mock_domain_flags={"dev_flags": 4})) == errno.EINVAL
    assert sorted(m.host.ctxs[m.fd].objects) == before and len(m.host.mock_devs) == 2


def test_mock_domain_replace(m):
    """MOCK_DOMAIN_REPLACE: a selftest id (else ENOENT); pt_id written back (the auto HWPT for an IOAS)."""
    ioas, ioas2 = m.ioas(), m.ioas()
    stdev, hwpt, idev = m.mock_domain(ioas)
    cmd = m.ioctl(T.IOMMU_TEST_CMD, m.test(T.IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE, stdev,
                                           mock_domain_replace={"pt_id": ioas2}))
    new_hwpt = cmd.mock_domain_replace.pt_id
    assert new_hwpt not in (0, hwpt, ioas2)
    assert hwpt not in m.host.ctxs[m.fd].objects          # the old auto domain died with its last device
    assert m.err(T.IOMMU_TEST_CMD, m.test(T.IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE, idev,
                                          mock_domain_replace={"pt_id": ioas})) == errno.ENOENT


def test_md_check_map(m):
    """MD_CHECK_MAP: the domain maps each 2 KiB of the IOVA range to the page under uptr."""
    ioas = m.ioas()
    _, hwpt, _ = m.mock_domain(ioas)
    uptr = m.map(ioas, T.MOCK_APERTURE_START, 8192)
    ok = m.test(T.IOMMU_TEST_OP_MD_CHECK_MAP, hwpt, check_map={"iova": T.MOCK_APERTURE_START, "length": 8192,
                                                               "uptr": uptr})
    m.ioctl(T.IOMMU_TEST_CMD, ok)
    ok.check_map.iova += 2048
    ok.check_map.length = 2048
    ok.check_map.uptr = uptr + 2048
    m.ioctl(T.IOMMU_TEST_CMD, ok)
    ok.check_map.uptr = uptr                     # a different page than the one mapped there
    assert m.err(T.IOMMU_TEST_CMD, ok) == errno.EINVAL
    ok.check_map.uptr = uptr + 1024              # not MOCK_IO_PAGE_SIZE aligned
    assert m.err(T.IOMMU_TEST_CMD, ok) == errno.EINVAL
    ok.check_map.uptr, ok.check_map.iova = uptr + 8192, T.MOCK_APERTURE_START + 8192   # nothing mapped
    ok.check_map.uptr = uptr
    assert m.err(T.IOMMU_TEST_CMD, ok) == errno.EINVAL
    ok.id = ioas
    assert m.err(T.IOMMU_TEST_CMD, ok) == errno.ENOENT


# -- GET_HW_INFO ---------------------------------------------------------------------------------
def test_get_hw_info_selftest_data(m):
    """mock_domain_hw_info through iommufd_get_hw_info: type SELFTEST, data_len 8 reported back,
    min(data_len, 8) bytes copied and the rest of the user buffer zeroed; DIRTY_TRACKING capability
    unless the device is NO_DIRTY; out_max_pasid_log2 0."""
    ioas = m.ioas()
    _, _, idev = m.mock_domain(ioas)
    buf = m.host.mem.mmap(16)
    m.host.mem.write(buf, b"\xff" * 16)
    info = m.ioctl(T.IOMMU_GET_HW_INFO, T.iommu_hw_info(dev_id=idev, data_len=16, data_uptr=buf,
                                                         out_max_pasid_log2=7))
    assert info.out_data_type == T.IOMMU_HW_INFO_TYPE_SELFTEST and info.data_len == 8
    assert info.out_capabilities == T.IOMMU_HW_CAP_DIRTY_TRACKING and info.out_max_pasid_log2 == 0
    got = T.iommu_test_hw_info.from_buffer_copy(m.host.mem.read(buf, 8))
    assert (got.flags, got.test_reg) == (0, T.IOMMU_HW_INFO_SELFTEST_REGVAL)
    assert m.host.mem.read(buf + 8, 8) == bytes(8)
    m.host.mem.write(buf, b"\xff" * 16)
    m.ioctl(T.IOMMU_GET_HW_INFO, T.iommu_hw_info(dev_id=idev, data_len=4, data_uptr=buf))
    assert m.host.mem.read(buf, 8) == bytes(4) + b"\xff" * 4     # only the flags fit
    _, _, nodirty = m.mock_domain(m.ioas(), T.MOCK_FLAGS_DEVICE_NO_DIRTY)
    assert m.ioctl(T.IOMMU_GET_HW_INFO, T.iommu_hw_info(dev_id=nodirty)).out_capabilities == 0
    assert m.err(T.IOMMU_GET_HW_INFO, T.iommu_hw_info(dev_id=idev, data_len=8, data_uptr=0)) == errno.EFAULT
    assert m.err(T.IOMMU_GET_HW_INFO, T.iommu_hw_info(dev_id=ioas)) == errno.ENOENT


# -- nested HWPTs and invalidation ------------------------------------------------------------------
def test_nested_hwpt_alloc_rules(m):
    """The alloc_hwpt_nested negative cases, in the order the kernel checks them."""
    ioas = m.ioas()
    _, _, idev = m.mock_domain(ioas)
    data = T.iommu_hwpt_selftest(iotlb=T.IOMMU_TEST_IOTLB_DEFAULT)
    assert m.err(T.IOMMU_HWPT_ALLOC, m.hwpt_alloc(idev, ioas, T.IOMMU_HWPT_ALLOC_NEST_PARENT
                                                  | T.IOMMU_HWPT_FAULT_ID_VALID)) == errno.EOPNOTSUPP
    assert m.err(T.IOMMU_HWPT_ALLOC, m.hwpt_alloc(ioas, ioas)) == errno.ENOENT
    assert m.err(T.IOMMU_HWPT_ALLOC, m.hwpt_alloc(idev, idev)) == errno.EINVAL
    parent = m.ioctl(T.IOMMU_HWPT_ALLOC, m.hwpt_alloc(idev, ioas, T.IOMMU_HWPT_ALLOC_NEST_PARENT)).out_hwpt_id
    plain = m.ioctl(T.IOMMU_HWPT_ALLOC, m.hwpt_alloc(idev, ioas)).out_hwpt_id
    sel = T.IOMMU_HWPT_DATA_SELFTEST
    cases = [(errno.EINVAL, dict(data_type=T.IOMMU_HWPT_DATA_NONE, data=data)),   # type/len disagree
             (errno.EOPNOTSUPP, dict(data_type=sel + 1, data=data)),              # the mock's type check
             (errno.EINVAL, dict(data_type=sel, data=data, data_len=3)),          # below offsetofend(iotlb)
             (errno.EINVAL, dict(data_type=sel, data=data, data_len=8)),          # above the kernel's struct
             (errno.EOPNOTSUPP, dict(data_type=sel, data=data, flags=T.IOMMU_HWPT_ALLOC_NEST_PARENT))]
    for want, kw in cases:
        flags = kw.pop("flags", 0)
        assert m.err(T.IOMMU_HWPT_ALLOC, m.hwpt_alloc(idev, parent, flags, **kw)) == want, kw
    nul = m.hwpt_alloc(idev, parent, data_type=sel, data_len=4)
    assert m.err(T.IOMMU_HWPT_ALLOC, nul) == errno.EFAULT                    # data_uptr NULL
    assert m.err(T.IOMMU_HWPT_ALLOC, m.hwpt_alloc(idev, plain, data_type=sel, data=data)) == errno.EINVAL
    nested = m.ioctl(T.IOMMU_HWPT_ALLOC, m.hwpt_alloc(idev, parent, data_type=sel, data=data)).out_hwpt_id
    assert nested == plain + 1                                                 # the failures left no ids used
    assert m.err(T.IOMMU_HWPT_ALLOC, m.hwpt_alloc(idev, nested, data_type=sel, data=data)) == errno.EINVAL
    assert m.err(T.IOMMU_DESTROY, T.iommu_destroy(id=parent)) == errno.EBUSY
    for i in range(4):
        m.ioctl(T.IOMMU_TEST_CMD, m.test(T.IOMMU_TEST_OP_MD_CHECK_IOTLB, nested,
                                         check_iotlb={"id": i, "iotlb": T.IOMMU_TEST_IOTLB_DEFAULT}))
    assert m.err(T.IOMMU_TEST_CMD, m.test(T.IOMMU_TEST_OP_MD_CHECK_IOTLB, nested,
                                          check_iotlb={"id": 4, "iotlb": 0})) == errno.EINVAL
    assert m.err(T.IOMMU_TEST_CMD, m.test(T.IOMMU_TEST_OP_MD_CHECK_IOTLB, parent,
                                          check_iotlb={"id": 0, "iotlb": 0})) == errno.ENOENT


def _invalidate(m, hwpt, entries, entry_len=8, num=None, data_type=T.IOMMU_HWPT_INVALIDATE_DATA_SELFTEST,
                null=False):
    raw = b"".join(bytes(T.iommu_hwpt_invalidate_selftest(flags=f, iotlb_id=i)) for f, i in entries)
    uptr = 0 if null else m.host.mem.mmap(max(len(raw), 1))
    if raw and not null:
        m.host.mem.write(uptr, raw)
    cmd = T.iommu_hwpt_invalidate(size=32, hwpt_id=hwpt, data_uptr=uptr, data_type=data_type, entry_len=entry_len,
                                  entry_num=len(entries) if num is None else num)
    buf = bytearray(bytes(cmd))
    try:
        m.host.ioctl(m.fd, T.IOMMU_HWPT_INVALIDATE, buf)
        err = 0
    except KernelErr as e:
        err = e.errno
    return err, T.iommu_hwpt_invalidate.from_buffer_copy(buf).entry_num


def _iotlb(m, hwpt):
    return m.host.ctxs[m.fd].objects[hwpt].domain.iotlb


def test_hwpt_invalidate_entry_num_written_back(m):
    """iommufd_hwpt_invalidate responds with entry_num = entries handled on every path."""
    ioas = m.ioas()
    _, _, idev = m.mock_domain(ioas)
    parent = m.ioctl(T.IOMMU_HWPT_ALLOC, m.hwpt_alloc(idev, ioas, T.IOMMU_HWPT_ALLOC_NEST_PARENT)).out_hwpt_id
    data = T.iommu_hwpt_selftest(iotlb=T.IOMMU_TEST_IOTLB_DEFAULT)
    nested = m.ioctl(T.IOMMU_HWPT_ALLOC, m.hwpt_alloc(idev, parent, data_type=T.IOMMU_HWPT_DATA_SELFTEST,
                                                      data=data)).out_hwpt_id
    D = T.IOMMU_TEST_IOTLB_DEFAULT
    assert _invalidate(m, parent, [(0, 0)]) == (errno.ENOENT, 0)               # not a nested HWPT
    assert _invalidate(m, nested, [], num=0) == (0, 0)
    assert _invalidate(m, nested, [(0, 0)], data_type=T.IOMMU_HWPT_INVALIDATE_DATA_SELFTEST_INVALID) == (
        errno.EINVAL, 0)
    assert _invalidate(m, nested, [(0, 0)], entry_len=9) == (errno.EINVAL, 0)
    assert _invalidate(m, nested, [(0, 0)], entry_len=1) == (errno.EINVAL, 0)
    assert _invalidate(m, nested, [(0, 0)], entry_len=0) == (errno.EINVAL, 0)
    assert _invalidate(m, nested, [(0, 0)], entry_len=4097) == (errno.EINVAL, 0)
    assert _invalidate(m, nested, [(0, 0)], null=True) == (errno.EINVAL, 0)
    assert _invalidate(m, nested, [(0xFFFFFFFF, 0)]) == (errno.EOPNOTSUPP, 0)
    assert _invalidate(m, nested, [(0, 4)]) == (errno.EINVAL, 0)
    assert _iotlb(m, nested) == [D] * 4
    assert _invalidate(m, nested, [(0, 0), (0xFFFFFFFF, 1)]) == (errno.EOPNOTSUPP, 1)
    assert _iotlb(m, nested) == [0, D, D, D]
    assert _invalidate(m, nested, [(0, 2), (0, 3)]) == (0, 2)
    assert _iotlb(m, nested) == [0, D, 0, 0]
    assert _invalidate(m, nested, [(T.IOMMU_TEST_INVALIDATE_FLAG_ALL, 3)]) == (0, 1)
    assert _iotlb(m, nested) == [0, 0, 0, 0]


# -- dirty tracking --------------------------------------------------------------------------------
def test_dirty_tracking_flag_rules(m):
    """DIRTY_TRACKING needs IOMMU_CAP_DIRTY_TRACKING (a NO_DIRTY device: EOPNOTSUPP); a NO_DIRTY
    device cannot attach to a domain with dirty_ops (mock_domain_nop_attach: EINVAL); setting
    tracking on a HWPT without dirty_ops is EOPNOTSUPP."""
    ioas = m.ioas()
    _, plain, idev = m.mock_domain(ioas)
    hwpt = m.ioctl(T.IOMMU_HWPT_ALLOC, m.hwpt_alloc(idev, ioas, T.IOMMU_HWPT_ALLOC_DIRTY_TRACKING)).out_hwpt_id
    m.mock_domain(hwpt)
    assert m.err(T.IOMMU_TEST_CMD, m.test(T.IOMMU_TEST_OP_MOCK_DOMAIN_FLAGS, hwpt, mock_domain_flags={
        "dev_flags": T.MOCK_FLAGS_DEVICE_NO_DIRTY})) == errno.EINVAL
    ioas2 = m.ioas()
    _, _, nd = m.mock_domain(ioas2, T.MOCK_FLAGS_DEVICE_NO_DIRTY)
    assert m.err(T.IOMMU_HWPT_ALLOC, m.hwpt_alloc(nd, ioas2, T.IOMMU_HWPT_ALLOC_DIRTY_TRACKING)) == errno.EOPNOTSUPP
    assert m.err(T.IOMMU_HWPT_SET_DIRTY_TRACKING, T.iommu_hwpt_set_dirty_tracking(
        hwpt_id=plain, flags=T.IOMMU_HWPT_DIRTY_TRACKING_ENABLE)) == errno.EOPNOTSUPP
    assert m.err(T.IOMMU_HWPT_SET_DIRTY_TRACKING, T.iommu_hwpt_set_dirty_tracking(hwpt_id=hwpt, flags=2)) == \
        errno.EOPNOTSUPP
    assert m.err(T.IOMMU_HWPT_SET_DIRTY_TRACKING, T.iommu_hwpt_set_dirty_tracking(hwpt_id=ioas)) == errno.ENOENT


def _dirty_setup(m, length):
    ioas = m.ioas()
    _, _, idev = m.mock_domain(ioas)
    io2 = m.ioas()
    m.map(io2, T.MOCK_APERTURE_START, length)
    hwpt = m.ioctl(T.IOMMU_HWPT_ALLOC, m.hwpt_alloc(idev, io2, T.IOMMU_HWPT_ALLOC_DIRTY_TRACKING)).out_hwpt_id
    return hwpt


def _mark(m, hwpt, length, bits, page=2048):
    nbits = length // page
    bm = bytearray((nbits + 7) // 8)
    for b in bits:
        bm[b // 8] |= 1 << (b % 8)
    uptr = m.host.mem.mmap(len(bm))
    m.host.mem.write(uptr, bytes(bm))
    return m.test(T.IOMMU_TEST_OP_DIRTY, hwpt, dirty={"iova": T.MOCK_APERTURE_START, "length": length,
                                                      "page_size": page, "uptr": uptr})


def _get_bitmap(m, hwpt, length, flags=0, page=2048, offset=0):
    nbytes = ((length // page + 63) // 64) * 8
    uptr = m.host.mem.mmap(nbytes + offset) + offset
    m.ioctl(T.IOMMU_HWPT_GET_DIRTY_BITMAP, T.iommu_hwpt_get_dirty_bitmap(
        hwpt_id=hwpt, flags=flags, iova=T.MOCK_APERTURE_START, length=length, page_size=page, data=uptr))
    raw = m.host.mem.read(uptr, nbytes)
    return {i for i in range(length // page) if raw[i // 8] >> (i % 8) & 1}


def test_dirty_bitmap_read_clear_and_no_clear(m):
    """TEST_OP_DIRTY marks IOPTEs only while tracking (EINVAL before) and counts what it marked;
    GET_DIRTY_BITMAP reports them at the given page size and clears them unless NO_CLEAR, also
    into a bitmap that is not u64 aligned."""
    length = 64 * 2048
    hwpt = _dirty_setup(m, length)
    assert m.err(T.IOMMU_TEST_CMD, _mark(m, hwpt, length, [0])) == errno.EINVAL
    m.ioctl(T.IOMMU_HWPT_SET_DIRTY_TRACKING, T.iommu_hwpt_set_dirty_tracking(
        hwpt_id=hwpt, flags=T.IOMMU_HWPT_DIRTY_TRACKING_ENABLE))
    assert m.ioctl(T.IOMMU_TEST_CMD, _mark(m, hwpt, length, [0, 5, 63])).dirty.out_nr_dirty == 3
    assert _get_bitmap(m, hwpt, length, T.IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR, offset=0xff1) == {0, 5, 63}
    assert _get_bitmap(m, hwpt, length) == {0, 5, 63}
    assert _get_bitmap(m, hwpt, length) == set()
    m.ioctl(T.IOMMU_TEST_CMD, _mark(m, hwpt, length, [8, 9]))
    assert _get_bitmap(m, hwpt, length, page=4096) == {4}   # two 2 KiB IOPTEs, one 4 KiB bit
    assert m.err(T.IOMMU_HWPT_GET_DIRTY_BITMAP, T.iommu_hwpt_get_dirty_bitmap(
        hwpt_id=hwpt, iova=T.MOCK_APERTURE_START + 1024, length=length, page_size=2048, data=0)) == errno.EINVAL
    assert m.err(T.IOMMU_HWPT_GET_DIRTY_BITMAP, T.iommu_hwpt_get_dirty_bitmap(
        hwpt_id=hwpt, iova=T.MOCK_APERTURE_START, length=0, page_size=2048, data=0)) == errno.EINVAL
    assert m.err(T.IOMMU_HWPT_GET_DIRTY_BITMAP, T.iommu_hwpt_get_dirty_bitmap(
        hwpt_id=hwpt, flags=2, iova=T.MOCK_APERTURE_START, length=length, page_size=2048)) == errno.EOPNOTSUPP


def test_enable_clears_old_dirty_bits(m):
    """iopt_set_dirty_tracking(enable) clears the IOPTEs' dirty bits first (a clean snapshot)."""
    length = 16 * 2048
    hwpt = _dirty_setup(m, length)
    on = T.iommu_hwpt_set_dirty_tracking(hwpt_id=hwpt, flags=T.IOMMU_HWPT_DIRTY_TRACKING_ENABLE)
    m.ioctl(T.IOMMU_HWPT_SET_DIRTY_TRACKING, on)
    m.ioctl(T.IOMMU_TEST_CMD, _mark(m, hwpt, length, [1, 2]))
    m.ioctl(T.IOMMU_HWPT_SET_DIRTY_TRACKING, T.iommu_hwpt_set_dirty_tracking(hwpt_id=hwpt))
    m.ioctl(T.IOMMU_HWPT_SET_DIRTY_TRACKING, on)
    assert _get_bitmap(m, hwpt, length) == set()


def test_huge_iova_device_reports_whole_huge_pages(m):
    """A HUGE_IOVA device's domain maps a 1 MiB-aligned run with 1 MiB IOPTEs: one dirty 2 KiB
    entry inside reports the whole huge page (512 bits)."""
    huge = 1 << 20
    length = 2 * huge
    ioas = m.ioas()
    _, _, idev = m.mock_domain(ioas, T.MOCK_FLAGS_DEVICE_HUGE_IOVA)
    io2 = m.ioas()
    uptr = m.host.mem.mmap(length + huge)
    m.map(io2, T.MOCK_APERTURE_START, length, uptr=(uptr + huge - 1) & ~(huge - 1))
    hwpt = m.ioctl(T.IOMMU_HWPT_ALLOC, m.hwpt_alloc(idev, io2, T.IOMMU_HWPT_ALLOC_DIRTY_TRACKING)).out_hwpt_id
    m.ioctl(T.IOMMU_HWPT_SET_DIRTY_TRACKING, T.iommu_hwpt_set_dirty_tracking(
        hwpt_id=hwpt, flags=T.IOMMU_HWPT_DIRTY_TRACKING_ENABLE))
    m.ioctl(T.IOMMU_TEST_CMD, _mark(m, hwpt, length, [600]))
    assert _get_bitmap(m, hwpt, length) == set(range(512, 1024))


# -- fault queues ----------------------------------------------------------------------------------
def test_fault_queue_iopf_round_trip(m):
    """FAULT_QUEUE_ALLOC gives an object and an fd; a nested HWPT with FAULT_ID_VALID delivers
    TRIGGER_IOPF's page request once the device is replaced onto it; read() hands out struct
    iommu_hwpt_pgfault records with a cookie, write() answers them."""
    ioas = m.ioas()
    stdev, _, idev = m.mock_domain(ioas)
    fa = m.ioctl(T.IOMMU_FAULT_QUEUE_ALLOC, T.iommu_fault_alloc())
    fault_id, fault_fd = fa.out_fault_id, fa.out_fault_fd
    assert fault_fd in m.host.files and fault_id != 0
    assert m.err(T.IOMMU_FAULT_QUEUE_ALLOC, T.iommu_fault_alloc(flags=1)) == errno.EOPNOTSUPP
    parent = m.ioctl(T.IOMMU_HWPT_ALLOC, m.hwpt_alloc(idev, ioas, T.IOMMU_HWPT_ALLOC_NEST_PARENT)).out_hwpt_id
    data = T.iommu_hwpt_selftest(iotlb=T.IOMMU_TEST_IOTLB_DEFAULT)
    sel = T.IOMMU_HWPT_DATA_SELFTEST
    assert m.err(T.IOMMU_HWPT_ALLOC, m.hwpt_alloc(idev, parent, T.IOMMU_HWPT_FAULT_ID_VALID, sel, data,
                                                  fault_id=0xFFFFFFFF)) == errno.ENOENT
    iopf = m.ioctl(T.IOMMU_HWPT_ALLOC, m.hwpt_alloc(idev, parent, T.IOMMU_HWPT_FAULT_ID_VALID, sel, data,
                                                    fault_id=fault_id)).out_hwpt_id
    assert iopf == parent + 1                       # the ENOENT attempt gave its id back
    trigger = m.test(T.IOMMU_TEST_OP_TRIGGER_IOPF, trigger_iopf={
        "dev_id": idev, "pasid": 1, "grpid": 2, "perm": 3, "addr": 0xdeadbeaf})
    m.ioctl(T.IOMMU_TEST_CMD, trigger)              # not attached yet: dropped
    assert m.host.read(fault_fd, 40) == b""
    m.ioctl(T.IOMMU_TEST_CMD, m.test(T.IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE, stdev, mock_domain_replace={"pt_id": iopf}))
    assert m.err(T.IOMMU_DESTROY, T.iommu_destroy(id=iopf)) == errno.EBUSY
    m.ioctl(T.IOMMU_TEST_CMD, trigger)
    with pytest.raises(KernelErr) as e:
        m.host.read(fault_fd, 39)
    assert e.value.errno == errno.ESPIPE
    rec = T.iommu_hwpt_pgfault.from_buffer_copy(m.host.read(fault_fd, 80))
    assert (rec.flags, rec.dev_id, rec.pasid, rec.grpid, rec.perm, rec.addr, rec.length, rec.cookie) == (
        T.IOMMU_PGFAULT_FLAGS_PASID_VALID | T.IOMMU_PGFAULT_FLAGS_LAST_PAGE, idev, 1, 2, 3, 0xdeadbeaf, 0, 1)
    bad = bytes(T.iommu_hwpt_page_response(cookie=rec.cookie, code=2))
    with pytest.raises(KernelErr) as e:
        m.host.write(fault_fd, bad)
    assert e.value.errno == errno.EINVAL
    assert m.host.write(fault_fd, bytes(T.iommu_hwpt_page_response(cookie=rec.cookie))) == 8
    with pytest.raises(KernelErr) as e:             # answered already
        m.host.write(fault_fd, bytes(T.iommu_hwpt_page_response(cookie=rec.cookie)))
    assert e.value.errno == errno.EINVAL
    m.ioctl(T.IOMMU_TEST_CMD, trigger)              # pending when the device leaves: auto-responded
    m.ioctl(T.IOMMU_TEST_CMD, m.test(T.IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE, stdev,
                                     mock_domain_replace={"pt_id": parent}))
    assert m.host.read(fault_fd, 40) == b""
    m.destroy(iopf)
    assert m.err(T.IOMMU_DESTROY, T.iommu_destroy(id=fault_id)) == errno.EBUSY   # the fd holds it
    m.host.close(fault_fd)
    m.destroy(fault_id)


def test_fault_fd_keeps_the_ctx(m):
    """The fault fd holds a ctx reference (iommufd_ctx_get): closing /dev/iommu first leaves the
    ctx alive until the fault fd goes."""
    fa = m.ioctl(T.IOMMU_FAULT_QUEUE_ALLOC, T.iommu_fault_alloc())
    m.host.close(m.fd)
    assert m.host.ctxs
    m.host.close(fa.out_fault_fd)
    assert not m.host.ctxs


def test_fault_queue_absent_before_6_11():
    m = Mock("linux-6.7")
    with pytest.raises(KernelErr) as e:
        m.ioctl(T.IOMMU_FAULT_QUEUE_ALLOC, T.iommu_fault_alloc())
    assert e.value.errno == errno.ENOTTY


def test_state_with_mock_objects_clones_and_snapshots(m):
    """Host.clone / snapshot cover mock devices, fault queues and mock domain state."""
    ioas = m.ioas()
    m.mock_domain(ioas)
    fa = m.ioctl(T.IOMMU_FAULT_QUEUE_ALLOC, T.iommu_fault_alloc())
    copy = m.host.clone()
    assert copy.snapshot() == m.host.snapshot()
    m.host.close(fa.out_fault_fd)
    assert copy.snapshot() != m.host.snapshot()


def test_mock_device_cannot_join_another_drivers_domain():
    """__iommu_attach_group: dev_iommu_ops(dev) != domain->owner -> EINVAL.  Beside an SMMUv3 (an
    IOMMU registered with a fwnode) the mock probes its devices: the auto search skips the SMMU's
    domain and makes a mock one, and a mock device cannot be put on the SMMU's HWPT."""
    from pyiommufd.client import Iommufd, VfioDevice
    emu = emulated(System.simple("smmuv3", devices={"nic": True}), "linux-6.12")
    ifd = Iommufd(emu.transport)
    ioas = ifd.ioas_alloc()
    nic = VfioDevice(emu.transport, emu.cdev_path("nic"))
    nic.bind(ifd)
    smmu_hwpt = nic.attach(ioas.id)
    m = Mock.__new__(Mock)
    m.host, m.fd = emu.host, ifd.fd
    _, mock_hwpt, _ = m.mock_domain(ioas.id)
    assert mock_hwpt != smmu_hwpt
    assert m.host.ctxs[m.fd].objects[mock_hwpt].domain.driver == "mock"
    assert m.err(T.IOMMU_TEST_CMD, m.test(T.IOMMU_TEST_OP_MOCK_DOMAIN, smmu_hwpt)) == errno.EINVAL


@pytest.mark.parametrize("iommu", ["intel", "amd"])
def test_no_mock_iommu_beside_intel_or_amd(iommu):
    """Intel and AMD register without a fwnode before the selftest: iommu_fwspec_ops(NULL) picks
    them for the mock device, their probe refuses it, it has no IOMMU, and iommufd_device_bind
    fails device_iommu_capable(CACHE_COHERENCY): EINVAL, nothing left behind."""
    emu = emulated(System.simple(iommu, devices={}), "linux-6.12")
    m = Mock.__new__(Mock)
    m.host, m.fd = emu.host, emu.host.open("/dev/iommu")
    ioas = m.ioas()
    assert m.err(T.IOMMU_TEST_CMD, m.test(T.IOMMU_TEST_OP_MOCK_DOMAIN, ioas)) == errno.EINVAL
    assert sorted(m.host.ctxs[m.fd].objects) == [ioas] and not m.host.mock_devs
