"""VFIO's side: device cdevs (6.6+) and the group compat path (every era).

Mirrors drivers/vfio/device_cdev.c, drivers/vfio/iommufd.c and drivers/vfio/group.c
(6.12.117 for the cdev; the group path as 6.2.1-6.5 use it with an iommufd as the
container: VFIO_GROUP_SET_CONTAINER(iommufd), then VFIO_GROUP_GET_DEVICE_FD opens the
device, which binds it (vfio_iommufd_bind) and attaches it to the ctx's compat IOAS
through the same auto-domain search).
"""
from __future__ import annotations

import errno

from . import device as idevice
from .err import KernelErr


class PhysDevice:
    """struct vfio_device + struct device: what the host has, and VFIO's per-device state."""

    __slots__ = ("name", "unit", "group", "canwbs", "cdev", "ctx_fd", "idev_id", "attached", "open_via")
    _fixed = ("name", "unit", "group", "canwbs", "cdev")   # never rebound (snapshot.fixed_slots)

    def __init__(self, desc):
        self.name, self.unit, self.group, self.canwbs, self.cdev = (
            desc.name, desc.unit, desc.group, desc.canwbs, desc.cdev)
        self.ctx_fd = None      # the iommufd this device is bound to (df->iommufd)
        self.idev_id = None     # its DEVICE object id
        self.attached = False   # vdev->iommufd_attached
        self.open_via = None    # "cdev" | "group" | None

    def snapshot(self):
        return (self.name, self.ctx_fd, self.idev_id, self.attached, self.open_via)


class CdevFile:
    """An open /dev/vfio/devices/vfioN (struct vfio_device_file)."""

    __slots__ = ("dev", "access_granted", "refs")
    _fixed = ("dev",)
    kind = "cdev"

    def __init__(self, dev: PhysDevice):
        self.dev = dev
        self.access_granted = False

    def snapshot(self):
        return ("cdev", self.dev.name, self.access_granted)


class GroupFile:
    """An open /dev/vfio/<group>; ``ctx_fd`` is the iommufd set as its container."""

    __slots__ = ("group", "ctx_fd", "refs")
    _fixed = ("group",)
    kind = "group"

    def __init__(self, group: str):
        self.group = group
        self.ctx_fd = None

    def snapshot(self):
        return ("group", self.group, self.ctx_fd)


class GroupDeviceFile:
    """A device fd from VFIO_GROUP_GET_DEVICE_FD."""

    __slots__ = ("dev", "refs")
    _fixed = ("dev",)
    kind = "group-device"

    def __init__(self, dev: PhysDevice):
        self.dev = dev

    def snapshot(self):
        return ("group-device", self.dev.name)


def _argsz(cmd, minsz: int) -> None:
    if cmd.argsz < minsz or cmd.flags:
        raise KernelErr(errno.EINVAL, f"argsz below {minsz} or non-zero flags")


def cdev_bind(host, f: CdevFile, cmd, minsz: int) -> None:
    """vfio_df_ioctl_bind_iommufd (6.12.117): argsz/flags/negative fd -> EINVAL; the group opened
    through the legacy path -> EBUSY (vfio_device_block_group); this fd bound already -> EINVAL;
    iommufd_ctx_from_fd (EBADF / EBADFD); vfio_df_open: the device open through another cdev fd
    -> EINVAL; then vfio_iommufd_physical_bind -> iommufd_device_bind."""
    if cmd.argsz < minsz or cmd.flags or cmd.iommufd < 0:
        raise KernelErr(errno.EINVAL, "argsz, flags or negative iommufd")
    dev = f.dev
    if dev.open_via == "group" or any(isinstance(o, GroupFile) and o.group == dev.group
                                      for o in host.files.values()):
        raise KernelErr(errno.EBUSY, f"group {dev.group} is open through the legacy group path")
    if f.access_granted:
        raise KernelErr(errno.EINVAL, f"{dev.name} is already bound through this fd")
    ctx = host.ctx_from_fd(cmd.iommufd)
    if dev.open_via == "cdev":
        raise KernelErr(errno.EINVAL, f"{dev.name} is open through another cdev fd (vfio_df_open)")
    idev = idevice.device_bind(ctx, dev)
    dev.ctx_fd, dev.idev_id, dev.open_via = ctx.fd, idev.id, "cdev"
    f.access_granted = True
    cmd.out_devid = idev.id


def _bound(host, dev: PhysDevice):
    ctx = host.ctxs[dev.ctx_fd]
    return ctx, ctx.objects[dev.idev_id]


def physical_attach_ioas(host, dev: PhysDevice, pt_id: int) -> int:
    """vfio_iommufd_physical_attach_ioas: replace when already attached (6.6+), else attach."""
    ctx, idev = _bound(host, dev)
    if dev.attached:
        return idevice.device_replace(ctx, idev, pt_id)
    pt_id = idevice.device_attach(ctx, idev, pt_id)
    dev.attached = True
    return pt_id


def physical_detach_ioas(host, dev: PhysDevice) -> None:
    """vfio_iommufd_physical_detach_ioas: a no-op when not attached."""
    if not dev.attached:
        return
    ctx, idev = _bound(host, dev)
    idevice.device_detach(ctx, idev)
    dev.attached = False


def physical_unbind(host, dev: PhysDevice) -> None:
    """vfio_df_close -> vfio_iommufd_physical_unbind: detach, then iommufd_device_unbind."""
    physical_detach_ioas(host, dev)
    ctx, idev = _bound(host, dev)
    idevice.device_unbind(ctx, idev)
    dev.ctx_fd = dev.idev_id = dev.open_via = None


def cdev_attach(host, f: CdevFile, cmd, minsz: int) -> None:
    """vfio_df_ioctl_attach_pt."""
    _argsz(cmd, minsz)
    cmd.pt_id = physical_attach_ioas(host, f.dev, cmd.pt_id)


def cdev_detach(host, f: CdevFile, cmd, minsz: int) -> None:
    """vfio_df_ioctl_detach_pt."""
    _argsz(cmd, minsz)
    physical_detach_ioas(host, f.dev)


def group_set_container(host, f: GroupFile, fd: int) -> None:
    """vfio_group_ioctl_set_container with an iommufd: the group uses that ctx.
    fdget -> EBADF; already set -> EINVAL; fd not an iommufd -> EBADFD.  6.2.1
    (iommufd_vfio_compat_ioas_id) creates the compat IOAS when the ctx has none -- it takes
    an object id."""
    fd = host.fdget(fd)
    if f.ctx_fd is not None:
        raise KernelErr(errno.EINVAL, "group already has a container")
    ctx = host.ctx_from_file(fd)
    if ctx.vfio_ioas is None:
        from .ioas import Ioas
        ctx.vfio_ioas = ctx.alloc(Ioas())
        ctx.finalize(ctx.vfio_ioas)
    ctx.refs += 1   # iommufd_ctx_from_file's reference, kept in group->iommufd until unset/release
    f.ctx_fd = fd


def group_get_device_fd(host, f: GroupFile, name: str) -> PhysDevice:
    """vfio_group_ioctl_get_device_fd -> vfio_device_open -> vfio_iommufd_bind (6.2.1/6.5):
    bind, then attach to the ctx's compat IOAS; any failure undoes the bind."""
    if f.ctx_fd is None:
        raise KernelErr(errno.EINVAL, "group has no container")
    dev = host.devices.get(name)
    if dev is None or dev.group != f.group:
        raise KernelErr(errno.ENODEV, f"no device {name!r} in group {f.group}")
    if dev.open_via is not None:
        raise KernelErr(errno.EBUSY, f"{name} is already open")
    ctx = host.ctxs[f.ctx_fd]
    if ctx.vfio_ioas is None:
        raise KernelErr(errno.ENODEV, "the iommufd has no compat IOAS (IOMMU_VFIO_IOAS SET first)")
    idev = idevice.device_bind(ctx, dev)
    try:
        idevice.device_attach(ctx, idev, ctx.vfio_ioas.id)
    except KernelErr:
        idevice.device_unbind(ctx, idev)
        raise
    dev.ctx_fd, dev.idev_id, dev.open_via, dev.attached = ctx.fd, idev.id, "group", True
    return dev
