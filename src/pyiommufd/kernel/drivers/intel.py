"""Intel VT-d: drivers/iommu/intel/iommu.c (read at 6.12.117, older tags in docs/kernel-notes-drivers-kvm.md)."""
from __future__ import annotations

import errno
import functools

from ... import uapi
from ..err import KernelErr
from .base import RESV_MSI, Domain, Driver

# Register values QEMU's emulated VT-d reports (observed on 6.12.117 in QEMU 7.2, SPEC.md section 9):
# ecap 0xf00fca with snoop-control=on, 0xf00f4a with it off (they differ in bit 7, SC).
QEMU_ECAP_SC_ON = 0xF00FCA
QEMU_ECAP_SC_OFF = 0xF00F4A
QEMU_CAP = 0x00D2008C22260286  # the cap_reg value QEMU 7.2 gives for aw-bits=39 (checked by conformance)

MSI_WINDOW = (0xFEE00000, 0xFEEFFFFF)  # IOAPIC_RANGE_START..END, intel_iommu_get_resv_regions
DEFAULT_DOMAIN_ADDRESS_WIDTH = 57      # intel/iommu.c; md_domain_init's width up to 6.11
_RESV_REGIONS = ((MSI_WINDOW[0], MSI_WINDOW[1], RESV_MSI),)   # the same for every device: one tuple


@functools.cache
def domain_address_width(cap: int) -> int:
    """paging_domain_alloc: gaw = min(agaw_to_width(iommu->agaw), cap_mgaw(cap)), where iommu->agaw
    is the largest SAGAW level up to 57 bits (iommu_calculate_agaw) and a level is 30 + 9 * agaw bits.
    QEMU_CAP: SAGAW 0x2 (agaw 1, 39 bits), MGAW 39 -> 39."""
    sagaw, mgaw = (cap >> 8) & 0x1F, ((cap >> 16) & 0x3F) + 1
    agaw = max(a for a in range(4) if sagaw >> a & 1)
    return min(30 + 9 * agaw, mgaw)


# Every emulated unit reports QEMU_CAP: its width is static configuration, worked out once.
QEMU_CAP_WIDTH = domain_address_width(QEMU_CAP)


class IntelDriver(Driver):
    __slots__ = ()
    name = "intel"
    hw_info_type = uapi.IOMMU_HW_INFO_TYPE_INTEL_VTD

    def _unit(self, dev):
        return self.host.units[dev.unit]

    def capable_enforce_cc(self, dev) -> bool:
        """intel_iommu_capable: IOMMU_CAP_ENFORCE_CACHE_COHERENCY -> ecap_sc_support(info->iommu->ecap)."""
        return self._unit(dev).snoop_control

    @property
    def has_domain_alloc_user(self) -> bool:
        return self.profile.hwpt_alloc is not None

    def domain_alloc(self, dev, flags: int = 0, parent: Domain | None = None, nested_data: bool = False,
                     user_data=None) -> Domain:
        """intel_iommu_domain_alloc_user (6.12.117): NEST_PARENT needs nested translation and
        DIRTY_TRACKING needs SSADS on the unit; QEMU's legacy-mode VT-d has neither (EOPNOTSUPP,
        observed).  A nested domain (intel_nested_domain_alloc) takes a stage-1 table on a
        NEST_PARENT stage-2 domain."""
        unit = self._unit(dev)
        if parent is not None:
            if user_data is not None and user_data.type != uapi.IOMMU_HWPT_DATA_VTD_S1:
                raise KernelErr(errno.EOPNOTSUPP, "intel: nested data must be IOMMU_HWPT_DATA_VTD_S1")
            if not nested_data:
                raise KernelErr(errno.EOPNOTSUPP, "nested domain needs VTD_S1 data")
            dom = self.host.new_domain(self.name, kind="nested", parent=parent, first_level=True)
            return dom
        if nested_data:
            raise KernelErr(errno.EOPNOTSUPP, "VTD_S1 data needs a nesting parent")
        if flags & uapi.IOMMU_HWPT_ALLOC_NEST_PARENT and not unit.nesting:
            raise KernelErr(errno.EOPNOTSUPP, f"{unit.name}: no nested translation (ecap_nest)")
        if flags & uapi.IOMMU_HWPT_ALLOC_DIRTY_TRACKING and not unit.dirty_tracking:
            raise KernelErr(errno.EOPNOTSUPP, f"{unit.name}: no SSADS dirty tracking")
        dom = self.host.new_domain(self.name, first_level=self.host.system.intel_page_table == "first-level",
                                   nest_parent=bool(flags & uapi.IOMMU_HWPT_ALLOC_NEST_PARENT),
                                   dirty_tracking=bool(flags & uapi.IOMMU_HWPT_ALLOC_DIRTY_TRACKING))
        if self.profile.intel_aperture_at_alloc:
            # 6.12.117 paging_domain_alloc: gaw and max_addr from the unit; the aperture as
            # domain_update_iommu_cap sets it.
            dom.gaw = QEMU_CAP_WIDTH   # domain_address_width(QEMU_CAP)
            dom.max_addr = (1 << dom.gaw) - 1
            self._set_aperture(dom)
        else:
            # Up to 6.11 (v6.2.1, v6.6.9, v6.6.87, v6.8 intel_iommu_domain_alloc, which 6.8's
            # domain_alloc_user calls): md_domain_init(DEFAULT_DOMAIN_ADDRESS_WIDTH) and
            # aperture_end = __DOMAIN_MAX_ADDR(57) whatever the unit; it narrows at attach.
            dom.gaw = DEFAULT_DOMAIN_ADDRESS_WIDTH
            dom.aperture_end = (1 << DEFAULT_DOMAIN_ADDRESS_WIDTH) - 1
        return dom

    @staticmethod
    def _set_aperture(dom: Domain) -> None:
        """domain_update_iommu_cap: geometry.aperture_end = __DOMAIN_MAX_ADDR(gaw) for second-level
        tables, __DOMAIN_MAX_ADDR(gaw - 1) for first-level ones (canonical addresses)."""
        dom.aperture_end = (1 << (dom.gaw - (1 if dom.first_level else 0))) - 1

    def check_map(self, domain: Domain, start: int, last: int, prot: int) -> None:
        """intel_iommu_map (v6.2.1, v6.6.9, v6.8, 6.12.117): a mapping ending past 2^gaw -> EFAULT
        (reachable only where the IOAS's reservation came from a wider aperture: a domain filled
        before its first attach, up to 6.11); then __domain_mapping: neither DMA_PTE_READ nor
        DMA_PTE_WRITE -> EINVAL.  ``prot`` holds the IOAS_MAP READABLE/WRITEABLE bits."""
        if domain.kind != "paging":
            return
        if last + 1 > domain.max_addr and last + 1 > 1 << domain.gaw:
            raise KernelErr(errno.EFAULT, f"intel: iommu width ({domain.gaw}) is not sufficient for "
                                          f"the mapped address ({last + 1:#x})")
        if not prot & (uapi.IOMMU_IOAS_MAP_READABLE | uapi.IOMMU_IOAS_MAP_WRITEABLE):
            raise KernelErr(errno.EINVAL, "intel: __domain_mapping refuses a PTE without read or write")

    def enforce_cache_coherency(self, domain: Domain) -> bool:
        """intel_iommu_enforce_cache_coherency.

        False if an attached device's unit lacks SC (domain_support_force_snooping); from
        e645c20e8e9c (v6.7, 6.6.11) also false for a second-level domain that has_mappings.
        Otherwise force_snooping; second level: set_pte_snp, so only IOPTEs written from now
        on carry SNP (domain_set_force_snooping) -- the existing ones are not rewritten."""
        if domain.kind == "nested":
            return False
        if domain.enforce_cc:
            return True
        capable, devices = self.capable_enforce_cc, self.host.devices
        non_sc = tuple([d for d in domain.devices if not capable(devices[d])])
        if non_sc and self.profile.intel_driver_checks:
            return False
        if self.profile.intel_has_mappings_fix and not domain.first_level and domain.has_mappings:
            return False
        if not domain.first_level:
            domain.set_pte_snp = True
        domain.enforce_cc = True
        domain.upgraded_over = non_sc
        return True

    def attach_dev(self, domain: Domain, dev) -> None:
        """prepare_domain_attach_device (v6.2.1, v6.6.9, v6.6.87, v6.8, 6.12.117): force_snooping
        on a unit without SC -> EINVAL; a dirty-tracking domain on a unit without SSADS -> EINVAL;
        max_addr above 1 << the unit's width -> EINVAL, else gaw becomes that width, and
        dmar_domain_attach_device -> domain_attach_iommu -> domain_update_iommu_cap narrows the
        aperture (the io_pagetable keeps what it reserved when the domain was added).
        A nested domain is checked against its stage-2 parent (intel_nested_attach_dev)."""
        target = domain.parent if domain.kind == "nested" else domain
        unit = self._unit(dev)
        if self.profile.intel_driver_checks and target.enforce_cc and not unit.snoop_control:
            raise KernelErr(errno.EINVAL, f"{dev.name}: domain enforces snooping, {dev.unit} lacks Snoop Control")
        if domain.dirty_tracking and not unit.dirty_tracking:
            raise KernelErr(errno.EINVAL, f"{dev.name}: dirty tracking domain, {dev.unit} lacks SSADS")
        if domain.kind != "paging":
            return
        width = QEMU_CAP_WIDTH   # domain_address_width(QEMU_CAP)
        if domain.max_addr > 1 << width:
            raise KernelErr(errno.EINVAL, f"{dev.name}: domain maps up to {domain.max_addr:#x}, "
                                          f"{dev.unit} translates {width} bits")
        domain.gaw = width
        self._set_aperture(domain)

    def resv_regions(self, dev):
        return _RESV_REGIONS

    def hw_info(self, dev) -> tuple[int, bytes]:
        """intel_iommu_hw_info: struct iommu_hw_info_vtd with the unit's cap and ecap registers;
        flags is IOMMU_HW_INFO_VTD_ERRATA_772415_SPR17 from 6.8 on (always set), 0 in 6.6."""
        info = uapi.iommu_hw_info_vtd(flags=0 if self.profile.hw_info == "6.6" else 1, cap_reg=QEMU_CAP,
                                      ecap_reg=QEMU_ECAP_SC_ON if self._unit(dev).snoop_control else QEMU_ECAP_SC_OFF)
        return self.hw_info_type, bytes(info)

    def dma_coherent(self, domain: Domain, dev, iova: int, snoop: bool) -> bool:
        """A no-snoop DMA is made coherent only where the unit has SC and the translation says so:
        second level, the IOPTE's SNP bit; first level, PGSNP in the PASID entry (set for every
        device once the domain enforces)."""
        if snoop:
            return True
        if not self._unit(dev).snoop_control:
            return False
        target = domain.parent if domain.kind == "nested" else domain
        if target.first_level or domain.kind == "nested":
            return target.enforce_cc
        pte = target.pte_at(iova)
        return bool(pte and pte[2])

    def forces_snoop(self, domain: Domain, dev) -> bool:
        target = domain.parent if domain.kind == "nested" else domain
        if not self._unit(dev).snoop_control or not target.enforce_cc:
            return False
        return target.first_level or domain.kind == "nested" or all(snp for _, snp in target.ptes.values())
