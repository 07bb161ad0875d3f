"""iommufd DEVICE objects: bind, attach, replace, detach, the auto-domain search, hw_info.

Mirrors drivers/iommu/iommufd/device.c.  The structure is 6.12.117's; the era
differences are profile switches, each noted where it applies:

* E1 (6.2-6.5, iommufd_device_do_attach in 6.2.1, iommufd_hw_pagetable_attach in 6.5):
  no iommufd_group, a group member attached elsewhere fails in the IOMMU core (EBUSY);
  a CC-capable device upgrades a non-CC domain before attaching; the domain is added to
  the io_pagetable at its first attach.
* E2 (6.6): iommufd_group (EINVAL for a member going elsewhere); the upgrade in attach and
  in replace.
* E3 (6.7+): no upgrade at all (2ccabf81ddff); the driver alone decides on attach.
"""
from __future__ import annotations

import errno

from .. import uapi
from . import fault, iommu
from .drivers.mock import MockDev
from .err import KernelErr
from .hw_pagetable import HwptPaging, abort_paging, enforce_cc, fill, hwpt_put, is_paging, paging_alloc
from .main import OBJ_DEVICE, OBJ_HWPT_NESTED, OBJ_HWPT_PAGING, OBJ_IOAS, IommufdCtx, Obj


class IGroup:
    """struct iommufd_group: per ctx and iommu_group, the HWPT the group is in and the
    bound devices attached through it (device_list)."""

    __slots__ = ("group", "hwpt", "devices", "handle")
    _fixed = ("group", "devices")   # never rebound (snapshot.fixed_slots)

    def __init__(self, group):
        self.group = group
        self.hwpt = None
        self.devices: list = []
        self.handle = None   # the attach handle's device (iommufd_attach_handle->idev), 6.12

    def snapshot(self):
        return (self.hwpt.id if self.hwpt else None, tuple(d.id for d in self.devices),
                self.handle.id if self.handle is not None else None)


class Device(Obj):
    """struct iommufd_device.  ``enforce_cc`` is fixed at bind:
    device_iommu_capable(dev, IOMMU_CAP_ENFORCE_CACHE_COHERENCY) (iommufd_device_bind)."""

    __slots__ = ("dev", "igroup", "enforce_cc", "iopf_enabled")
    _fixed = ("dev", "igroup")

    def __init__(self, dev, igroup: IGroup, enforce_cc: bool):
        super().__init__(OBJ_DEVICE)
        self.dev = dev
        self.igroup = igroup
        self.enforce_cc = enforce_cc
        self.iopf_enabled = 0   # idev->iopf_enabled (fault.c)

    @property
    def attached(self) -> bool:
        return self in self.igroup.devices

    def destroy(self, ctx: IommufdCtx) -> None:
        """iommufd_device_destroy: give back DMA ownership, drop the iommufd_group when unused."""
        iommu.release_dma_owner(self.igroup.group)
        if not any(isinstance(o, Device) and o.igroup is self.igroup for o in ctx.objects.values()):
            if not self.igroup.devices and self.igroup.hwpt is None:
                ctx.groups.pop(self.igroup.group.name, None)
        if not isinstance(self.dev, MockDev):
            ctx.host.put_ctx(ctx)   # pairs with iommufd_ctx_get in device_bind

    def snapshot(self):
        return (self.dev.name, self.igroup.group.name, self.enforce_cc, self.iopf_enabled)


# -- bind / unbind ------------------------------------------------------------------
def device_bind(ctx: IommufdCtx, dev) -> Device:
    """iommufd_device_bind: claim DMA ownership of the group for this ctx, make the DEVICE."""
    host = ctx.host
    if host.driver_of(dev) is None:   # device_iommu_capable(IOMMU_CAP_CACHE_COHERENCY) without an IOMMU
        raise KernelErr(errno.EINVAL, f"{dev.name} has no IOMMU (no driver probed it)")
    group = host.group_of(dev)
    iommu.claim_dma_owner(group, ctx.fd)
    igroup = ctx.groups.get(group.name)
    new_igroup = igroup is None
    if new_igroup:
        igroup = IGroup(group)
    try:
        idev = ctx.alloc(Device(dev, igroup, host.driver_of(dev).capable_enforce_cc(dev)))
    except KernelErr:
        iommu.release_dma_owner(group)
        raise
    idev.users += 1  # the calling driver is a user until device_unbind
    if new_igroup:
        ctx.groups[group.name] = igroup
    if not isinstance(dev, MockDev):   # iommufd_selftest_is_mock_dev: no ctx reference
        ctx.refs += 1    # iommufd_ctx_get: the ctx outlives its fd while a device is bound (Device.destroy)
    ctx.finalize(idev)
    return idev


def device_unbind(ctx: IommufdCtx, idev: Device) -> None:
    """iommufd_device_unbind: the driver's user goes; the object is destroyed."""
    idev.users -= 1
    ctx.remove(idev.id)


# -- attach core ---------------------------------------------------------------------
def _reserve(ctx, hwpt: HwptPaging, devs) -> None:
    """iopt_table_enforce_dev_resv_regions for each device; all or nothing."""
    host, iopt = ctx.host, hwpt.ioas.iopt
    done = []
    try:
        for d in devs:
            host.fallible("reserved regions")
            for start, last, _ in host.driver_of(d.dev).resv_regions(d.dev):
                iopt.reserve(start, last, d.dev.name)
            done.append(d)
    except KernelErr:
        for d in done + [d]:
            hwpt.ioas.iopt.remove_reserved(d.dev.name)
        raise


def hw_pagetable_attach(ctx: IommufdCtx, hwpt, idev: Device) -> None:
    """iommufd_hw_pagetable_attach (6.6+) / iommufd_device_do_attach (6.2.1)."""
    host, p = ctx.host, ctx.host.profile
    igroup = idev.igroup
    if p.era != "E1" and igroup.hwpt is not None and igroup.hwpt is not hwpt:
        raise KernelErr(errno.EINVAL, f"group {igroup.group.name} is attached to HWPT {igroup.hwpt.id}")
    paging = hwpt if isinstance(hwpt, HwptPaging) else None
    if paging is not None and p.upgrade_on_attach and idev.enforce_cc and not paging.enforce_cc:
        # E1/E2: the upgrade happens before the attach and is not undone if the attach fails.
        enforce_cc(paging, host)
    if paging is not None:
        _reserve(ctx, paging, [idev])
    first = (igroup.hwpt is not hwpt) if p.era == "E1" else not igroup.devices
    if first:
        if hwpt.fault is not None:   # iommufd_hwpt_attach_device (6.11+)
            fault.iopf_enable(idev)
        try:
            iommu.attach_group(host, hwpt.domain, igroup.group)
        except KernelErr:
            if hwpt.fault is not None:
                fault.iopf_disable(idev)
            if paging is not None:
                paging.ioas.iopt.remove_reserved(idev.dev.name)
            raise
        igroup.handle = idev
        # E1 only: iopt_table_add_domain at first attach (6.2.1).  From 6.6 the caller
        # (iommufd_hwpt_paging_alloc) adds the domain after the immediate attach.
        if paging is not None and p.era == "E1" and not paging.filled:
            try:
                fill(paging, host)
            except KernelErr:
                iommu.detach_group(host, igroup.group)
                paging.ioas.iopt.remove_reserved(idev.dev.name)
                raise
        igroup.hwpt = hwpt
    hwpt.users += 1   # pairs with hwpt_put after hw_pagetable_detach
    igroup.devices.append(idev)


def hw_pagetable_detach(ctx: IommufdCtx, idev: Device):
    """iommufd_hw_pagetable_detach: the last device of the group detaches the group.
    Returns the HWPT; the caller puts it."""
    igroup = idev.igroup
    hwpt = igroup.hwpt
    igroup.devices.remove(idev)
    if not igroup.devices:
        iommu.detach_group(ctx.host, igroup.group)   # iommufd_hwpt_detach_device
        if hwpt.fault is not None:
            fault.auto_response(hwpt, igroup.handle)
            fault.iopf_disable(idev)
        igroup.hwpt = None
        igroup.handle = None
    if isinstance(hwpt, HwptPaging):
        hwpt.ioas.iopt.remove_reserved(idev.dev.name)
    return hwpt


def do_attach(ctx, idev, hwpt):
    hw_pagetable_attach(ctx, hwpt, idev)
    return None


def do_replace(ctx: IommufdCtx, idev: Device, hwpt):
    """iommufd_device_do_replace.  Returns the old HWPT for the caller to put (None: no-op)."""
    host, p = ctx.host, ctx.host.profile
    igroup = idev.igroup
    if igroup.hwpt is None:
        raise KernelErr(errno.EINVAL, "replace on a group that is not attached")
    if p.replace_checks_device and idev not in igroup.devices:
        raise KernelErr(errno.EINVAL, "replace on a device that is not attached")
    if hwpt is igroup.hwpt:
        return None
    old = igroup.hwpt
    paging, old_paging = (hwpt if is_paging(hwpt) else None), (old if is_paging(old) else None)
    if paging is not None and p.upgrade_on_replace and not paging.enforce_cc and any(
            d.enforce_cc for d in igroup.devices):
        enforce_cc(paging, host)  # 6.6: iommufd_group_do_replace_paging
    new_ioas = paging is not None and (old_paging is None or old_paging.ioas is not paging.ioas)
    if new_ioas:
        _reserve(ctx, paging, igroup.devices)
    iopf_on = hwpt.fault is not None and old.fault is None   # iommufd_hwpt_replace_device (6.11+)
    if iopf_on:
        fault.iopf_enable(idev)
    try:
        iommu.replace_group_domain(host, igroup.group, hwpt.domain)
    except KernelErr:
        if iopf_on:
            fault.iopf_disable(idev)
        if new_ioas:
            for d in igroup.devices:
                paging.ioas.iopt.remove_reserved(d.dev.name)
        raise
    if old.fault is not None:
        fault.auto_response(old, igroup.handle)
        if hwpt.fault is None:
            fault.iopf_disable(idev)
    igroup.handle = idev
    if old_paging is not None and (paging is None or paging.ioas is not old_paging.ioas):
        for d in igroup.devices:
            old_paging.ioas.iopt.remove_reserved(d.dev.name)
    igroup.hwpt = hwpt
    n = len(igroup.devices)
    hwpt.users += n        # the device_list's users move to the new HWPT ...
    old.users -= n - 1     # ... keeping one on the old for the caller's put
    return old


def auto_get_domain(ctx: IommufdCtx, idev: Device, ioas, attach_fn) -> int:
    """iommufd_device_auto_get_domain: try each auto HWPT of the IOAS in list order
    (oldest first); EINVAL means incompatible, try the next; any other error fails.
    None fits: allocate one for this device (CC per the era), attach, append."""
    immediate = attach_fn is do_attach
    for hwpt in list(ioas.hwpt_list):
        if not hwpt.auto_domain:
            continue
        try:
            destroy = attach_fn(ctx, idev, hwpt)
        except KernelErr as e:
            if e.errno == errno.EINVAL:
                continue
            raise
        if destroy is not None:
            hwpt_put(ctx, destroy)
        return hwpt.id
    hwpt = paging_alloc(ctx, ioas, idev, 0, immediate)
    destroy = None
    if not immediate:
        try:
            destroy = attach_fn(ctx, idev, hwpt)
        except KernelErr:
            abort_paging(ctx, hwpt)
            raise
    hwpt.auto_domain = True
    ctx.finalize(hwpt)
    if destroy is not None:
        hwpt_put(ctx, destroy)
    return hwpt.id


def change_pt(ctx: IommufdCtx, idev: Device, pt_id: int, attach_fn) -> int:
    """iommufd_device_change_pt: a HWPT id attaches there, an IOAS id runs the auto search."""
    pt = ctx.get(pt_id)
    if pt.type in (OBJ_HWPT_PAGING, OBJ_HWPT_NESTED):
        destroy = attach_fn(ctx, idev, pt)
        if destroy is not None:
            hwpt_put(ctx, destroy)
        return pt_id
    if pt.type == OBJ_IOAS:
        return auto_get_domain(ctx, idev, pt, attach_fn)
    raise KernelErr(errno.EINVAL, f"pt_id {pt_id} is a {pt.type}")


def device_attach(ctx: IommufdCtx, idev: Device, pt_id: int) -> int:
    """iommufd_device_attach; the device gains a user (undone by device_detach)."""
    pt_id = change_pt(ctx, idev, pt_id, do_attach)
    idev.users += 1
    return pt_id


def device_replace(ctx: IommufdCtx, idev: Device, pt_id: int) -> int:
    """iommufd_device_replace."""
    return change_pt(ctx, idev, pt_id, do_replace)


def device_detach(ctx: IommufdCtx, idev: Device) -> None:
    """iommufd_device_detach: cannot fail."""
    hwpt = hw_pagetable_detach(ctx, idev)
    hwpt_put(ctx, hwpt)
    idev.users -= 1


# -- IOMMU_GET_HW_INFO ------------------------------------------------------------------
def get_hw_info(ctx: IommufdCtx, cmd, mem) -> None:
    """iommufd_get_hw_info (6.6 / 6.8 / 6.12.117): flags or reserved bytes -> EOPNOTSUPP,
    dev_id (ENOENT), copy min(data_len, driver's length) to data_uptr and zero the rest,
    report the driver's length back in data_len."""
    reserved = getattr(cmd, "__reserved")
    reserved = any(reserved) if not isinstance(reserved, int) else reserved
    if cmd.flags or reserved:
        raise KernelErr(errno.EOPNOTSUPP, "non-zero flags or __reserved")
    idev = ctx.get(cmd.dev_id, OBJ_DEVICE)
    driver = ctx.host.driver_of(idev.dev)
    dtype, data = driver.hw_info(idev.dev)
    copy_len = min(cmd.data_len, len(data))
    if cmd.data_len:
        mem.write(cmd.data_uptr, data[:copy_len] + bytes(cmd.data_len - copy_len))
    cmd.data_len = len(data)
    cmd.out_data_type = dtype
    if hasattr(cmd, "out_max_pasid_log2"):
        cmd.out_max_pasid_log2 = 0   # no device here enables PASID (dev->iommu->max_pasids 0)
    if hasattr(cmd, "out_capabilities"):
        cmd.out_capabilities = uapi.IOMMU_HW_CAP_DIRTY_TRACKING if driver.capable_dirty_tracking(idev.dev) else 0
