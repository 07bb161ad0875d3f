"""AMD-Vi: drivers/iommu/amd/iommu.c (6.12.117).  CC is hardwired: every IOPTE has
IOMMU_PTE_FC (force coherent), so amd_iommu_capable reports ENFORCE_CACHE_COHERENCY for
every device and amd_iommu_enforce_cache_coherency always returns true."""
from __future__ import annotations

from .base import RESV_MSI, Domain, Driver

MSI_RANGE = (0xFEE00000, 0xFEEFFFFF)  # MSI_RANGE_START..END, amd_iommu_get_resv_regions


class AmdDriver(Driver):
    __slots__ = ()
    name = "amd"

    def capable_enforce_cc(self, dev) -> bool:
        return True

    def enforce_cache_coherency(self, domain: Domain) -> bool:
        domain.enforce_cc = True
        return True

    def resv_regions(self, dev):
        return ((MSI_RANGE[0], MSI_RANGE[1], RESV_MSI),)

    def dma_coherent(self, domain: Domain, dev, iova: int, snoop: bool) -> bool:
        return True  # IOMMU_PTE_FC on every IOPTE, whatever the domain says

    def forces_snoop(self, domain: Domain, dev) -> bool:
        return True
