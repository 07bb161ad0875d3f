"""IOAS objects and their ioctls.  Mirrors drivers/iommu/iommufd/ioas.c (6.12.117)."""
from __future__ import annotations

import errno

from .. import uapi
from .err import KernelErr
from .io_pagetable import ULONG_MAX, IoPagetable
from .main import OBJ_IOAS, IommufdCtx, Obj


class Ioas(Obj):
    """struct iommufd_ioas: an io_pagetable and the list of paging HWPTs on it (hwpt_list)."""

    __slots__ = ("iopt", "hwpt_list")

    def __init__(self):
        super().__init__(OBJ_IOAS)
        self.iopt = IoPagetable()
        self.hwpt_list: list = []   # list_add_tail order: the oldest HWPT first

    def destroy(self, ctx: IommufdCtx) -> None:
        """iommufd_ioas_destroy: unmap everything (no HWPT can be left: each holds a user)."""
        self.iopt.unmap_all()

    def snapshot(self):
        return (self.iopt.snapshot(), tuple(h.id for h in self.hwpt_list))


def ioas_alloc(ctx: IommufdCtx, cmd: uapi.iommu_ioas_alloc) -> None:
    """iommufd_ioas_alloc_ioctl: flags -> EOPNOTSUPP."""
    if cmd.flags:
        raise KernelErr(errno.EOPNOTSUPP, "IOAS_ALLOC takes no flags")
    ioas = ctx.alloc(Ioas())
    cmd.out_ioas_id = ioas.id
    ctx.finalize(ioas)


def ioas_map(ctx: IommufdCtx, cmd: uapi.iommu_ioas_map) -> None:
    """iommufd_ioas_map: order of checks as in 6.12.117 -- unknown flags or __reserved
    (EOPNOTSUPP), iova/length >= ULONG_MAX (EOVERFLOW), neither READ nor WRITE (EINVAL),
    the IOAS lookup (ENOENT), then io_pagetable checks."""
    known = uapi.IOMMU_IOAS_MAP_FIXED_IOVA | uapi.IOMMU_IOAS_MAP_WRITEABLE | uapi.IOMMU_IOAS_MAP_READABLE
    if cmd.flags & ~known or getattr(cmd, "__reserved"):
        raise KernelErr(errno.EOPNOTSUPP, "unknown IOAS_MAP flags or non-zero __reserved")
    if cmd.iova >= ULONG_MAX or cmd.length >= ULONG_MAX:
        raise KernelErr(errno.EOVERFLOW, "iova or length >= ULONG_MAX")
    if ctx.host.profile.map_requires_prot and not cmd.flags & (
            uapi.IOMMU_IOAS_MAP_WRITEABLE | uapi.IOMMU_IOAS_MAP_READABLE):
        raise KernelErr(errno.EINVAL, "IOAS_MAP needs READABLE or WRITEABLE")
    ioas = ctx.get(cmd.ioas_id, OBJ_IOAS)
    ctx.host.fallible("area alloc")
    fixed = cmd.flags & uapi.IOMMU_IOAS_MAP_FIXED_IOVA
    cmd.iova = ioas.iopt.map(cmd.iova if fixed else None, cmd.user_va, cmd.length,
                             cmd.flags & (uapi.IOMMU_IOAS_MAP_WRITEABLE | uapi.IOMMU_IOAS_MAP_READABLE))


def ioas_unmap(ctx: IommufdCtx, cmd: uapi.iommu_ioas_unmap) -> None:
    """iommufd_ioas_unmap: 0/U64_MAX unmaps all; else whole areas only, ENOENT if none."""
    ioas = ctx.get(cmd.ioas_id, OBJ_IOAS)
    if cmd.iova == 0 and cmd.length == (1 << 64) - 1:
        unmapped = ioas.iopt.unmap_all()
    else:
        if cmd.iova >= ULONG_MAX or cmd.length >= ULONG_MAX:
            raise KernelErr(errno.EOVERFLOW, "iova or length >= ULONG_MAX")
        unmapped = ioas.iopt.unmap(cmd.iova, cmd.length)
        if not unmapped:
            raise KernelErr(errno.ENOENT, "no mapping in range")
    cmd.length = unmapped


def vfio_ioas(ctx: IommufdCtx, cmd: uapi.iommu_vfio_ioas) -> None:
    """iommufd_vfio_ioas (vfio_compat.c): GET / SET / CLEAR the compat IOAS."""
    if getattr(cmd, "__reserved"):
        raise KernelErr(errno.EOPNOTSUPP, "non-zero __reserved")
    if cmd.op == uapi.IOMMU_VFIO_IOAS_GET:
        if ctx.vfio_ioas is None:
            raise KernelErr(errno.ENODEV, "no compat IOAS")
        cmd.ioas_id = ctx.vfio_ioas.id
    elif cmd.op == uapi.IOMMU_VFIO_IOAS_SET:
        ctx.vfio_ioas = ctx.get(cmd.ioas_id, OBJ_IOAS)
    elif cmd.op == uapi.IOMMU_VFIO_IOAS_CLEAR:
        ctx.vfio_ioas = None
    else:
        raise KernelErr(errno.EOPNOTSUPP, f"unknown VFIO_IOAS op {cmd.op}")
