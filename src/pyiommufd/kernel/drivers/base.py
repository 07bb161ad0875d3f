"""The IOMMU driver interface the emulated iommufd calls, and the driver domain.

One ``Domain`` class serves every driver: the fields are the union of what the
drivers keep (struct dmar_domain's force_snooping / set_pte_snp / has_mappings /
use_first_level, the attached-device list, the IOPTEs with their snoop bit), so a
domain is one plain record that snapshots and copies cheaply.
"""
from __future__ import annotations

import errno

from ...errors import EmulationGap
from ..err import KernelErr

RESV_MSI = "msi"        # IOMMU_RESV_MSI: hardware MSI window
RESV_SW_MSI = "sw_msi"  # IOMMU_RESV_SW_MSI: software-managed MSI window


class Domain:
    """struct iommu_domain plus the driver's private part."""

    __slots__ = ("driver", "kind", "enforce_cc", "set_pte_snp", "has_mappings", "first_level",
                 "nest_parent", "parent", "dirty_tracking", "devices", "ptes", "upgraded_over",
                 "min_page_size", "serial", "aperture_start", "aperture_end", "gaw", "max_addr")
    _fixed = ("driver", "kind", "first_level", "parent", "devices", "ptes")   # never rebound (snapshot.fixed_slots)

    def __init__(self, driver: str, serial: int, *, kind: str = "paging", first_level: bool = False,
                 nest_parent: bool = False, parent: "Domain | None" = None, dirty_tracking: bool = False):
        self.driver = driver
        self.serial = serial            # identity for snapshots (domains have no uAPI id)
        self.kind = kind                # "paging" | "nested"
        self.enforce_cc = False         # dmar_domain->force_snooping / the SMMU's flag / AMD: set on request
        self.set_pte_snp = False        # Intel 2nd level: new IOPTEs get DMA_PTE_SNP
        self.has_mappings = False       # Intel: set by the first map, never cleared
        self.first_level = first_level  # Intel: dmar_domain->use_first_level
        self.nest_parent = nest_parent
        self.parent = parent            # nested domains: the stage-2 parent
        self.dirty_tracking = dirty_tracking
        self.devices: list[str] = []    # devices attached through the driver (dmar_domain->devices)
        self.ptes: dict[int, tuple[int, bool]] = {}  # iova -> (last, snoop bit written)
        self.upgraded_over: tuple[str, ...] = ()     # non-SC devices attached when CC was switched on
        self.min_page_size = 4096
        self.aperture_start = 0            # domain->geometry.aperture_start
        self.aperture_end = (1 << 64) - 1  # domain->geometry.aperture_end (ULONG_MAX: no limit)
        self.gaw: int | None = None        # Intel: dmar_domain->gaw; None for other drivers
        self.max_addr = 0                  # Intel: dmar_domain->max_addr (end of the highest map)

    def map(self, start: int, last: int, prot: int) -> None:
        """iommu_map of one area: IOPTEs written now carry the snoop bit iff set_pte_snp.
        The driver's ``check_map`` has accepted it first."""
        self.ptes[start] = (last, self.set_pte_snp)
        self.has_mappings = True
        if self.gaw is not None:   # intel_iommu_map: max_addr follows the highest mapped end
            self.max_addr = max(self.max_addr, last + 1)

    def unmap(self, start: int, last: int) -> None:
        """intel_iommu_unmap lowers max_addr only when the range unmapped ends at it (to the
        range's start; the kernel unmaps an area in batches, so there the start of the last
        batch: the same for a one-page area)."""
        self.ptes.pop(start, None)
        if self.gaw is not None and self.max_addr == last + 1:
            self.max_addr = start

    def split(self, start: int, iova: int) -> None:
        """iopt_area_split leaves the IOPTEs alone: the model's entry for the area starting at
        ``start`` becomes two, at ``iova`` | ``iova + 1``, with the same snoop bit."""
        last, snp = self.ptes.pop(start)
        self.ptes[start] = (iova, snp)
        self.ptes[iova + 1] = (last, snp)

    def pte_at(self, iova: int):
        for start, (last, snp) in self.ptes.items():
            if start <= iova <= last:
                return start, last, snp
        return None

    def stale_ptes(self) -> int:
        """IOPTEs without the snoop bit in a domain that claims to enforce CC (2nd level only)."""
        if not self.enforce_cc or self.first_level or self.kind != "paging":
            return 0
        return sum(1 for _, snp in self.ptes.values() if not snp)

    def snapshot(self):
        return (self.serial, self.driver, self.kind, self.enforce_cc, self.set_pte_snp, self.has_mappings,
                self.first_level, self.nest_parent, self.parent.serial if self.parent else None,
                self.dirty_tracking, tuple(self.devices), tuple(sorted(self.ptes.items())), self.upgraded_over,
                self.gaw, self.max_addr, self.aperture_end)


class Driver:
    """struct iommu_ops, reduced to what bears on domains and coherency.

    ``host`` gives access to units and devices; ``profile`` to the era's switches."""

    __slots__ = ("host", "profile")
    _fixed = __slots__   # never rebound (snapshot.fixed_slots)
    name = "base"
    hw_info_type = 0

    def __init__(self, host):
        self.host = host
        self.profile = host.profile

    # device_iommu_capable(dev, IOMMU_CAP_ENFORCE_CACHE_COHERENCY)
    def capable_enforce_cc(self, dev) -> bool:
        return False

    def domain_alloc(self, dev, flags: int = 0, parent: Domain | None = None, nested_data: bool = False,
                     user_data=None) -> Domain:
        """ops->domain_alloc_user (or iommu_paging_domain_alloc); ``user_data`` is
        (data_type, the bytes copied from the user) or None."""
        if flags or parent is not None or nested_data or user_data is not None:
            raise KernelErr(errno.EOPNOTSUPP, f"{self.name}: no domain_alloc_user")
        return self.host.new_domain(self.name)

    @property
    def has_domain_alloc_user(self) -> bool:
        return False

    # ops->enforce_cache_coherency; None when the driver has no such op
    def enforce_cache_coherency(self, domain: Domain) -> bool | None:
        return None

    def cache_invalidate_user(self, domain: Domain, array) -> None:
        """domain->ops->cache_invalidate_user of a nested domain (IOMMU_HWPT_INVALIDATE)."""
        raise EmulationGap(f"cache_invalidate_user of {self.name} nested domains is not modelled")

    def capable_dirty_tracking(self, dev) -> bool:
        """device_iommu_capable(dev, IOMMU_CAP_DIRTY_TRACKING): the unit's SSADS (Intel)."""
        return self.host.units[dev.unit].dirty_tracking

    def attach_dev(self, domain: Domain, dev) -> None:
        """Driver attach: raise KernelErr to refuse (EINVAL = incompatible)."""

    def check_map(self, domain: Domain, start: int, last: int, prot: int) -> None:
        """ops->map_pages refusing a mapping (raise KernelErr) before ``domain.map`` records it."""

    def resv_regions(self, dev) -> tuple[tuple[int, int, str], ...]:
        """iommu_get_resv_regions: (start, last, type) of each region (a constant tuple: callers only read it)."""
        return ()

    def hw_info(self, dev) -> tuple[int, bytes]:
        return 0, b""

    def dma_coherent(self, domain: Domain, dev, iova: int, snoop: bool) -> bool:
        """Is a DMA by ``dev`` through ``domain`` coherent with the CPU caches?"""
        return snoop

    def forces_snoop(self, domain: Domain, dev) -> bool:
        """Is every no-snoop DMA by ``dev`` through ``domain``, now and after later maps, made coherent?"""
        return False
