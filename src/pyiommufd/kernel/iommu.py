"""The IOMMU core's part: iommu_group, DMA ownership, attaching a domain to a group.

Mirrors the bits of drivers/iommu/iommu.c that iommufd relies on (6.12.117):
iommu_device_claim_dma_owner, iommu_attach_group (__iommu_attach_group: EBUSY while
the group sits in another non-default domain), iommu_group_replace_domain (all or
nothing: on a driver refusal the group goes back to its old domain), iommu_detach_group.
"""
from __future__ import annotations

import ctypes
import errno

from .. import uapi
from .err import KernelErr


class IommuGroup:
    __slots__ = ("name", "devices", "domain", "owner", "owner_cnt")
    _fixed = ("name", "devices")   # never rebound (snapshot.fixed_slots)

    def __init__(self, name: str, devices):
        self.name = name
        # every device of the group, bound or not: fixed by the platform, a tuple (a snapshot walks it, records nothing)
        self.devices: tuple[str, ...] = tuple(devices)
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
    attach_dev = host.driver_of_domain(domain).attach_dev   # domain->ops->attach_dev
    for name in group.devices:
        attach_dev(domain, host.device_named(name))


def attach_group(host, domain, group: IommuGroup) -> None:
    """iommu_attach_group (__iommu_attach_group): EBUSY if the group is in another domain, EINVAL
    for a domain of another driver (dev_iommu_ops(dev) != domain->owner: a mock device onto an
    Intel HWPT or the reverse); then the domain's driver checks each device."""
    if group.domain is not None and group.domain is not domain:
        raise KernelErr(errno.EBUSY, f"group {group.name} is attached to another domain")
    if host.driver_of(host.device_named(group.devices[0])) is not host.driver_of_domain(domain):
        raise KernelErr(errno.EINVAL, f"group {group.name}: the domain belongs to another IOMMU driver")
    _check_all(host, domain, group)
    domain.devices.extend(group.devices)
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


class UserData:
    """struct iommu_user_data (include/linux/iommu.h, 6.12.117): the driver-specific data of
    HWPT_ALLOC, read by the driver through ``copy`` (iommu_copy_struct_from_user)."""

    __slots__ = ("type", "uptr", "len")

    def __init__(self, type_: int, uptr: int, length: int):
        self.type, self.uptr, self.len = type_, uptr, length

    def copy(self, host, kstruct, data_type: int, min_last: str):
        """__iommu_copy_struct_from_user: type mismatch, len below offsetofend(min_last) or
        above the kernel's struct -> EINVAL; then copy_struct_from_user (EFAULT), zero-filled."""
        ksize = ctypes.sizeof(kstruct)
        if self.type != data_type:
            raise KernelErr(errno.EINVAL, f"data_type {self.type:#x}, the driver wants {data_type:#x}")
        if self.len < uapi.offsetofend(kstruct, min_last) or ksize < self.len:
            raise KernelErr(errno.EINVAL, f"data_len {self.len} outside {uapi.offsetofend(kstruct, min_last)}..{ksize}")
        return kstruct.from_buffer_copy(host.mem.read(self.uptr, self.len) + bytes(ksize - self.len))


class UserDataArray:
    """struct iommu_user_data_array: HWPT_INVALIDATE's entries; ``entry_num`` is written back
    by the driver with the number handled."""

    __slots__ = ("type", "uptr", "entry_len", "entry_num")

    def __init__(self, type_: int, uptr: int, entry_len: int, entry_num: int):
        self.type, self.uptr, self.entry_len, self.entry_num = type_, uptr, entry_len, entry_num

    def copy(self, host, kstruct, data_type: int, index: int, min_last: str):
        """__iommu_copy_struct_from_user_array: entry ``index`` as a UserData of entry_len bytes."""
        if index >= self.entry_num or not self.entry_num:
            raise KernelErr(errno.EINVAL, f"entry {index} of {self.entry_num}")
        return UserData(self.type, self.uptr + self.entry_len * index, self.entry_len).copy(
            host, kstruct, data_type, min_last)
