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

    def hw_info(self, dev) -> tuple[int, bytes]:
        """mock_domain_hw_info: struct iommu_test_hw_info { flags 0, test_reg REGVAL }."""
        return uapi.IOMMU_HW_INFO_TYPE_SELFTEST, bytes(
            uapi.iommu_test_hw_info(flags=0, test_reg=uapi.IOMMU_HW_INFO_SELFTEST_REGVAL))
