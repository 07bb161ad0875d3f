"""A description of an emulated machine: IOMMU kind, remapping units, devices, groups.

Plain frozen records; ``kernel.host.Host`` builds the running kernel from one.
"""
from __future__ import annotations

from dataclasses import dataclass, field

IOMMU_KINDS = ("intel", "amd", "smmuv3", "virtio", "mock")
INTEL_PAGE_TABLES = ("second-level", "first-level")


@dataclass(frozen=True)
class Unit:
    """A remapping unit (Intel DRHD / AMD IOMMU / SMMU instance)."""
    name: str
    snoop_control: bool = True      # Intel ECAP.SC
    nesting: bool = False           # Intel ecap_nest (QEMU legacy mode: no)
    dirty_tracking: bool = False    # Intel SSADS


@dataclass(frozen=True)
class DeviceDesc:
    name: str
    unit: str
    group: str                      # iommu_group name; default: a group of its own
    canwbs: bool = False            # SMMUv3 IORT CANWBS
    cdev: int = 0                   # N in /dev/vfio/devices/vfioN


@dataclass(frozen=True)
class System:
    iommu: str = "intel"
    units: tuple[Unit, ...] = (Unit("dmar0"),)
    devices: tuple[DeviceDesc, ...] = ()
    kvm: bool = False
    intel_page_table: str = "second-level"
    groups: tuple[str, ...] = field(default=())

    def __post_init__(self):
        if self.iommu not in IOMMU_KINDS:
            raise ValueError(f"unknown iommu {self.iommu!r}; expected one of {', '.join(IOMMU_KINDS)}")
        if self.intel_page_table not in INTEL_PAGE_TABLES:
            raise ValueError(f"unknown intel_page_table {self.intel_page_table!r}")
        unit_names = [u.name for u in self.units]
        if len(set(unit_names)) != len(unit_names):
            raise ValueError("duplicate unit name")
        names = [d.name for d in self.devices]
        if len(set(names)) != len(names):
            raise ValueError("duplicate device name")
        for d in self.devices:
            if d.unit not in unit_names:
                raise ValueError(f"device {d.name}: unknown unit {d.unit!r}")
        if not self.groups:
            groups = []
            for d in self.devices:
                if d.group not in groups:
                    groups.append(d.group)
            object.__setattr__(self, "groups", tuple(groups))

    @staticmethod
    def simple(iommu: str = "intel", devices: dict[str, bool] | None = None, kvm: bool = False, **kw) -> "System":
        """One unit per capability: ``devices`` maps name -> CC-capable (Intel: unit has SC)."""
        devices = devices or {}
        units = (Unit("dmar-sc", True), Unit("dmar-nosc", False))
        descs = tuple(DeviceDesc(n, "dmar-sc" if cc else "dmar-nosc", f"g-{n}", cdev=i)
                      for i, (n, cc) in enumerate(devices.items()))
        return System(iommu=iommu, units=units, devices=descs, kvm=kvm, **kw)
