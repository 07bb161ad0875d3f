"""The IOMMU core's part: iommu_group, DMA ownership, attaching a domain to a group.

Mirrors the bits of drivers/iommu/iommu.c that iommufd relies on (6.12.117):
iommu_device_claim_dma_owner, iommu_attach_group (__iommu_attach_group: EBUSY while
the group sits in another non-default domain), iommu_group_replace_domain (all or
nothing: on a driver refusal the group goes back to its old domain), iommu_detach_group.
"""
from __future__ import annotations

import errno

from .err import KernelErr


class IommuGroup:
    __slots__ = ("name", "devices", "domain", "owner", "owner_cnt")

    def __init__(self, name: str, devices: list[str]):
        self.name = name
        self.devices = devices        # every device of the group, bound or not
        self.domain = None            # the driver domain attached (None: default/blocked)
        self.owner = None             # DMA owner cookie (an iommufd ctx fd, or "vfio-group")
        self.owner_cnt = 0

    def snapshot(self):
        return (self.name, self.domain.serial if self.domain else None, self.owner, self.owner_cnt)


def claim_dma_owner(group: IommuGroup, owner) -> None:
    """iommu_device_claim_dma_owner: a group has one user-space DMA owner at a time
    (another owner -> EPERM)."""
    if group.owner_cnt and group.owner != owner:
        raise KernelErr(errno.EPERM, f"group {group.name} is owned by another DMA owner")
    group.owner = owner
    group.owner_cnt += 1


def release_dma_owner(group: IommuGroup) -> None:
    group.owner_cnt -= 1
    if not group.owner_cnt:
        group.owner = None


def _check_all(host, domain, group: IommuGroup) -> None:
    for name in group.devices:
        dev = host.device_named(name)
        host.driver_of(dev).attach_dev(domain, dev)


def attach_group(host, domain, group: IommuGroup) -> None:
    """iommu_attach_group: EBUSY if the group is in another domain; the driver checks each device."""
    if group.domain is not None and group.domain is not domain:
        raise KernelErr(errno.EBUSY, f"group {group.name} is attached to another domain")
    _check_all(host, domain, group)
    for name in group.devices:
        domain.devices.append(name)
    group.domain = domain


def replace_group_domain(host, group: IommuGroup, new) -> None:
    """iommu_group_replace_domain: the driver checks every device against ``new`` first; a
    refusal leaves the group in its old domain."""
    _check_all(host, new, group)
    old = group.domain
    for name in group.devices:
        if old is not None:
            old.devices.remove(name)
        new.devices.append(name)
    group.domain = new


def detach_group(host, group: IommuGroup) -> None:
    """iommu_detach_group: back to the default (blocked for a user-owned group) domain."""
    for name in group.devices:
        group.domain.devices.remove(name)
    group.domain = None
