"""The iommufd selftest mock IOMMU driver: drivers/iommu/iommufd/selftest.c (6.12.117), mock_ops.

* Devices: ``MockDev`` (struct mock_dev), made at run time by IOMMU_TEST_OP_MOCK_DOMAIN[_FLAGS]
  (mock_dev_create), named iommufd_mock<ida id>, each in an iommu_group of its own
  (generic_device_group).  Devices of a ``[system] iommu = "mock"`` scenario go through the
  same driver.
* mock_domain_capable: CACHE_COHERENCY yes, DIRTY_TRACKING unless MOCK_FLAGS_DEVICE_NO_DIRTY,
  ENFORCE_CACHE_COHERENCY never and no enforce_cache_coherency op: every domain is non-CC.
* Paging domains (mock_domain_alloc_paging): aperture MOCK_APERTURE_START..LAST, page size
  MOCK_IO_PAGE_SIZE = PAGE_SIZE / 2 (so an IOAS with a mock domain has iova_alignment 2048),
  plus MOCK_HUGE_PAGE_SIZE for a MOCK_FLAGS_DEVICE_HUGE_IOVA device.  domain_alloc_user adds
  dirty_ops for IOMMU_HWPT_ALLOC_DIRTY_TRACKING and makes nested domains from
  IOMMU_HWPT_DATA_SELFTEST (struct iommu_hwpt_selftest: the initial iotlb values).
* Attach (mock_domain_nop_attach): EINVAL only for a domain with dirty_ops and a NO_DIRTY device.
"""
from __future__ import annotations

import bisect
import errno

from ... import uapi
from ..err import KernelErr
from ..iommu import IommuGroup
from .base import Domain, Driver

PAGE_SIZE = 4096
MOCK_IO_PAGE_SIZE = PAGE_SIZE // 2
MOCK_HUGE_PAGE_SIZE = 512 * MOCK_IO_PAGE_SIZE


class MockDev:
    """struct mock_dev: ``flags`` are the MOCK_FLAGS_DEVICE_* given at creation; ``id`` the
    mock_dev_ida number.  Carries the PhysDevice fields iommufd reads (name, group) and its own
    iommu_group (``iommu_group``)."""

    __slots__ = ("name", "id", "flags", "group", "iommu_group", "unit", "canwbs", "cdev")

    def __init__(self, mid: int, flags: int):
        self.id = mid
        self.flags = flags
        self.name = f"iommufd_mock{mid}"
        self.group = self.name
        self.iommu_group = IommuGroup(self.name, [self.name])
        self.unit = None
        self.canwbs = False
        self.cdev = None

    def snapshot(self):
        return (self.name, self.flags, self.iommu_group.snapshot())


class MockDomain(Domain):
    """struct mock_iommu_domain / mock_iommu_domain_nested.

    ``dirty_ops``: domain->dirty_ops is set (allocated with DIRTY_TRACKING); ``tracking``:
    MOCK_DIRTY_TRACK in mock->flags; ``dirty``: the MOCK_PFN_DIRTY_IOVA bits, by xarray index
    (iova / MOCK_IO_PAGE_SIZE); ``huge``: pgsize_bitmap has MOCK_HUGE_PAGE_SIZE; ``iotlb``: a
    nested domain's MOCK_NESTED_DOMAIN_IOTLB_NUM values."""

    __slots__ = ("dirty_ops", "tracking", "dirty", "huge", "iotlb")

    def __init__(self, serial: int, **kw):
        super().__init__("mock", serial, **kw)
        self.dirty_ops = False
        self.tracking = False
        self.dirty: set[int] = set()
        self.huge = False
        self.iotlb: list[int] = []

    def unmap(self, start: int, last: int) -> None:
        super().unmap(start, last)
        # xa_erase drops the entry and its dirty bit with it
        self.dirty = {i for i in self.dirty if not start <= i * MOCK_IO_PAGE_SIZE <= last}

    def snapshot(self):
        return super().snapshot() + (self.dirty_ops, self.tracking, tuple(sorted(self.dirty)), self.huge,
                                     tuple(self.iotlb))


class MockDriver(Driver):
    __slots__ = ()
    name = "mock"
    hw_info_type = uapi.IOMMU_HW_INFO_TYPE_SELFTEST

    @property
    def has_domain_alloc_user(self) -> bool:
        return True

    def capable_dirty_tracking(self, dev) -> bool:
        """mock_domain_capable(IOMMU_CAP_DIRTY_TRACKING)."""
        return not getattr(dev, "flags", 0) & uapi.MOCK_FLAGS_DEVICE_NO_DIRTY

    def _alloc_paging(self, dev) -> MockDomain:
        """mock_domain_alloc_paging."""
        self.host.domain_serial += 1
        dom = MockDomain(self.host.domain_serial)
        dom.aperture_start = uapi.MOCK_APERTURE_START
        dom.aperture_end = uapi.MOCK_APERTURE_LAST
        dom.min_page_size = MOCK_IO_PAGE_SIZE   # 1 << __ffs(pgsize_bitmap)
        dom.huge = bool(getattr(dev, "flags", 0) & uapi.MOCK_FLAGS_DEVICE_HUGE_IOVA)
        return dom

    def domain_alloc(self, dev, flags: int = 0, parent: Domain | None = None, nested_data: bool = False,
                     user_data=None) -> Domain:
        """mock_domain_alloc_user (and mock_domain_alloc_paging when flags == 0 and no data).

        ``user_data``: a UserData (struct iommu_user_data) or None."""
        if parent is None:
            if flags & ~(uapi.IOMMU_HWPT_ALLOC_NEST_PARENT | uapi.IOMMU_HWPT_ALLOC_DIRTY_TRACKING):
                raise KernelErr(errno.EOPNOTSUPP, f"mock: unsupported flags {flags:#x}")
            dirty = bool(flags & uapi.IOMMU_HWPT_ALLOC_DIRTY_TRACKING)
            if user_data is not None or nested_data or (dirty and not self.capable_dirty_tracking(dev)):
                raise KernelErr(errno.EOPNOTSUPP, "mock: data for a paging domain, or dirty tracking on a "
                                                  "NO_DIRTY device")
            dom = self._alloc_paging(dev)
            dom.nest_parent = bool(flags & uapi.IOMMU_HWPT_ALLOC_NEST_PARENT)
            dom.dirty_ops = dirty
            return dom
        if user_data is None or user_data.type != uapi.IOMMU_HWPT_DATA_SELFTEST or flags:
            raise KernelErr(errno.EOPNOTSUPP, "mock nested domain: data_type must be IOMMU_HWPT_DATA_SELFTEST")
        if not isinstance(parent, MockDomain) or parent.kind != "paging":
            raise KernelErr(errno.EINVAL, "mock nested domain: parent is not a mock paging domain")
        cfg = user_data.copy(self.host, uapi.iommu_hwpt_selftest, uapi.IOMMU_HWPT_DATA_SELFTEST, "iotlb")
        self.host.domain_serial += 1
        dom = MockDomain(self.host.domain_serial, kind="nested", parent=parent)
        dom.iotlb = [cfg.iotlb] * uapi.MOCK_NESTED_DOMAIN_IOTLB_NUM
        return dom

    def attach_dev(self, domain: Domain, dev) -> None:
        """mock_domain_nop_attach."""
        if getattr(domain, "dirty_ops", False) and getattr(dev, "flags", 0) & uapi.MOCK_FLAGS_DEVICE_NO_DIRTY:
            raise KernelErr(errno.EINVAL, "mock: dirty-tracking domain and a NO_DIRTY device")

    def cache_invalidate_user(self, domain: MockDomain, array) -> None:
        """mock_domain_cache_invalidate_user: data type IOMMU_HWPT_INVALIDATE_DATA_SELFTEST (else
        EINVAL); each entry (struct iommu_hwpt_invalidate_selftest): unknown flags EOPNOTSUPP,
        iotlb_id > MOCK_NESTED_DOMAIN_IOTLB_ID_MAX EINVAL, FLAG_ALL zeroes every iotlb entry, else
        the one.  ``array.entry_num`` becomes the number handled, also on error."""
        processed = 0
        try:
            if array.type != uapi.IOMMU_HWPT_INVALIDATE_DATA_SELFTEST:
                raise KernelErr(errno.EINVAL, f"invalidation data_type {array.type:#x}")
            for i in range(array.entry_num):
                inv = array.copy(self.host, uapi.iommu_hwpt_invalidate_selftest,
                                 uapi.IOMMU_HWPT_INVALIDATE_DATA_SELFTEST, i, "iotlb_id")
                if inv.flags & ~uapi.IOMMU_TEST_INVALIDATE_FLAG_ALL:
                    raise KernelErr(errno.EOPNOTSUPP, f"entry {i}: unknown flags {inv.flags:#x}")
                if inv.iotlb_id > uapi.MOCK_NESTED_DOMAIN_IOTLB_ID_MAX:
                    raise KernelErr(errno.EINVAL, f"entry {i}: iotlb_id {inv.iotlb_id}")
                if inv.flags & uapi.IOMMU_TEST_INVALIDATE_FLAG_ALL:
                    domain.iotlb = [0] * uapi.MOCK_NESTED_DOMAIN_IOTLB_NUM
                else:
                    domain.iotlb[inv.iotlb_id] = 0
                processed += 1
        finally:
            array.entry_num = processed

    def hw_info(self, dev) -> tuple[int, bytes]:
        """mock_domain_hw_info: struct iommu_test_hw_info { flags 0, test_reg REGVAL }."""
        return uapi.IOMMU_HW_INFO_TYPE_SELFTEST, bytes(
            uapi.iommu_test_hw_info(flags=0, test_reg=uapi.IOMMU_HW_INFO_SELFTEST_REGVAL))


# -- the mock's IOPTEs (struct mock_iommu_domain.pfns) as far as the test ops observe them ------
class MockPtes:
    """The xarray of one mock paging domain, derived from what the domain maps: an entry per
    MOCK_IO_PAGE_SIZE of every area the domain holds (``domain.ptes``), MOCK_PFN_HUGE_IOVA on
    the entries of a MOCK_HUGE_PAGE_SIZE IOPTE, the "physical" address of an entry being the
    user page it maps (``iopt.iova_to_user``).

    Huge IOPTEs: iommu_map picks MOCK_HUGE_PAGE_SIZE for a chunk when the domain allows it
    (MOCK_FLAGS_DEVICE_HUGE_IOVA), the IOVA and the physical address are both aligned to it and
    the chunk lies in one physically contiguous run.  The model takes the user address for the
    physical one (they agree modulo the backing page size for hugetlbfs/THP memory) and asks
    ``host.mem.phys_contiguous(addr, length)`` when the memory object has it; without it,
    memory is taken as contiguous (as hugetlbfs-backed buffers, the selftest's huge variants,
    are)."""

    __slots__ = ("ranges", "iopt", "domain", "mem")

    def __init__(self, domain: MockDomain, iopt, mem):
        self.domain = domain
        self.iopt = iopt
        self.mem = mem
        self.ranges = sorted((s, l) for s, (l, _) in domain.ptes.items())

    def area(self, iova: int):
        i = bisect.bisect_right(self.ranges, (iova, 1 << 65)) - 1
        if i >= 0 and self.ranges[i][0] <= iova <= self.ranges[i][1]:
            return self.ranges[i]
        return None

    def entry(self, iova: int):
        """xa_load(&mock->pfns, iova / MOCK_IO_PAGE_SIZE): None, or whether it is HUGE."""
        a = self.area(iova)
        if a is None:
            return None
        if not self.domain.huge:
            return False
        block = iova & ~(MOCK_HUGE_PAGE_SIZE - 1)
        if block < a[0] or block + MOCK_HUGE_PAGE_SIZE - 1 > a[1]:
            return False
        user = self.iopt.iova_to_user(block)
        if user is None or user[1] % MOCK_HUGE_PAGE_SIZE:
            return False
        contiguous = getattr(self.mem, "phys_contiguous", None)
        return True if contiguous is None else bool(contiguous(user[1], MOCK_HUGE_PAGE_SIZE))


def set_dirty_tracking(domain: MockDomain, enable: bool) -> None:
    """mock_domain_set_dirty_tracking: enabling needs dirty_ops (EINVAL)."""
    if enable and not domain.dirty_ops:
        raise KernelErr(errno.EINVAL, "mock domain without dirty_ops")
    domain.tracking = enable


def read_and_clear_dirty(domain: MockDomain, ptes: MockPtes, iova: int, size: int, flags: int, record) -> None:
    """mock_domain_read_and_clear_dirty: walk the IOPTEs of [iova, iova+size) (a HUGE entry
    covers MOCK_HUGE_PAGE_SIZE from its head), test-and-clear the dirty bits of each
    (IOMMU_DIRTY_NO_CLEAR keeps them) and ``record(iova, pgsize)`` the dirty ones.
    ``record`` None: clearing only (iopt_clear_dirty_data, no bitmap).  Not tracking while
    reporting into a bitmap: EINVAL."""
    if not domain.tracking and record is not None:
        raise KernelErr(errno.EINVAL, "dirty tracking is off")
    end = iova + size
    dirty = domain.dirty
    while True:
        pgsize = MOCK_IO_PAGE_SIZE
        ent = ptes.entry(iova)
        if ent is not None:
            if ent:
                pgsize = MOCK_HUGE_PAGE_SIZE
            head = iova & ~(pgsize - 1)
            found = False
            for idx in range(head // MOCK_IO_PAGE_SIZE, (head + pgsize) // MOCK_IO_PAGE_SIZE):
                if idx in dirty and ptes.entry(idx * MOCK_IO_PAGE_SIZE) is not None:   # mock_test_and_clear_dirty
                    found = True
                    if not flags & uapi.IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR:
                        dirty.discard(idx)
            if found and record is not None:
                record(iova, pgsize)
        iova += pgsize
        if iova >= end:
            break

