"""virtio-iommu: drivers/iommu/virtio-iommu.c (6.12.117).  viommu_capable reports
IOMMU_CAP_CACHE_COHERENCY only, never ENFORCE_CACHE_COHERENCY, and there is no
enforce_cache_coherency op: every domain is non-CC."""
from __future__ import annotations

from .base import Driver


class VirtioDriver(Driver):
    __slots__ = ()
    name = "virtio"
