"""ARM SMMUv3: drivers/iommu/arm/arm-smmu-v3/arm-smmu-v3.c.

Through 6.12 the driver reports no IOMMU_CAP_ENFORCE_CACHE_COHERENCY and has no
enforce_cache_coherency op.  From v6.13 (e89573cf4a13) a master whose IORT entry sets
CANWBS is CC-capable; enforce_cache_coherency fails if any attached master lacks CANWBS;
arm_smmu_attach_prepare refuses (EINVAL) a non-CANWBS master on an enforcing domain.
The ``smmuv3_cc`` profile switch selects which."""
from __future__ import annotations

import errno

from ..err import KernelErr
from .base import RESV_SW_MSI, Domain, Driver

MSI_IOVA = (0x8000000, 0x8000000 + 0x100000 - 1)  # MSI_IOVA_BASE, MSI_IOVA_LENGTH


class Smmuv3Driver(Driver):
    __slots__ = ()
    name = "smmuv3"

    def capable_enforce_cc(self, dev) -> bool:
        return self.profile.smmuv3_cc and dev.canwbs

    def enforce_cache_coherency(self, domain: Domain) -> bool | None:
        if not self.profile.smmuv3_cc:
            return None
        if any(not self.host.devices[d].canwbs for d in domain.devices):
            return False
        domain.enforce_cc = True
        return True

    def attach_dev(self, domain: Domain, dev) -> None:
        if self.profile.smmuv3_cc and domain.enforce_cc and not dev.canwbs:
            raise KernelErr(errno.EINVAL, f"{dev.name}: enforcing domain, master lacks CANWBS")

    def resv_regions(self, dev):
        return ((MSI_IOVA[0], MSI_IOVA[1], RESV_SW_MSI),)

    def dma_coherent(self, domain: Domain, dev, iova: int, snoop: bool) -> bool:
        return snoop or (domain.enforce_cc and dev.canwbs)

    def forces_snoop(self, domain: Domain, dev) -> bool:
        return domain.enforce_cc and dev.canwbs
