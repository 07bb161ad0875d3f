"""IOAS objects and their ioctls.  Mirrors drivers/iommu/iommufd/ioas.c (6.12.117)."""
from __future__ import annotations

import errno

from .. import uapi
from .err import KernelErr
from .io_pagetable import HPAGE_SIZE, MAX_ALLOC_ALIGNMENT, PROT_READ, PROT_WRITE, ULONG_MAX, IoPagetable
from .main import OBJ_IOAS, IommufdCtx, Obj
from .pages import alloc_pages

_MAP_FLAGS = uapi.IOMMU_IOAS_MAP_FIXED_IOVA | uapi.IOMMU_IOAS_MAP_WRITEABLE | uapi.IOMMU_IOAS_MAP_READABLE
_IOVA_RANGE = 16   # sizeof(struct iommu_iova_range)


class Ioas(Obj):
    """struct iommufd_ioas: an io_pagetable and the list of paging HWPTs on it (hwpt_list)."""

    __slots__ = ("iopt", "hwpt_list")
    _fixed = ("iopt", "hwpt_list")   # never rebound (snapshot.fixed_slots)

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
    flags, iova, length = cmd.flags, cmd.iova, cmd.length
    if flags & ~_MAP_FLAGS or getattr(cmd, "__reserved"):
        raise KernelErr(errno.EOPNOTSUPP, "unknown IOAS_MAP flags or non-zero __reserved")
    if iova >= ULONG_MAX or length >= ULONG_MAX:
        raise KernelErr(errno.EOVERFLOW, "iova or length >= ULONG_MAX")
    host = ctx.host
    if host.profile.map_requires_prot and not flags & (PROT_WRITE | PROT_READ):
        raise KernelErr(errno.EINVAL, "IOAS_MAP needs READABLE or WRITEABLE")
    ioas = ctx.get(cmd.ioas_id, OBJ_IOAS)
    host.fallible("area alloc")
    cmd.iova = map_user_pages(ctx, ioas, iova if flags & uapi.IOMMU_IOAS_MAP_FIXED_IOVA else None, cmd.user_va,
                              length, flags & (PROT_WRITE | PROT_READ))


def max_alloc_alignment(host) -> int:
    """iopt_alloc_iova's cap: HPAGE_SIZE with CONFIG_TRANSPARENT_HUGEPAGE (``host.thp``)."""
    return HPAGE_SIZE if getattr(host, "thp", False) else MAX_ALLOC_ALIGNMENT


def map_user_pages(ctx: IommufdCtx, ioas, iova: int | None, uptr: int, length: int, prot: int) -> int:
    """iopt_map_user_pages: a new iopt_pages over the caller's memory (iopt_alloc_pages:
    EINVAL / EOVERFLOW), mapped as one area (iopt_map_pages)."""
    host = ctx.host
    pages, start_byte = alloc_pages(host, uptr, length, bool(prot & PROT_WRITE), ctx.account_mode)
    return ioas.iopt.map_pages(host, [(pages, start_byte, length)], length, iova, prot,
                               max_alloc_alignment(host) if iova is None else MAX_ALLOC_ALIGNMENT)


def ioas_copy(ctx: IommufdCtx, cmd: uapi.iommu_ioas_copy) -> None:
    """iommufd_ioas_copy (6.12.117): unknown flags (EOPNOTSUPP), a value >= ULONG_MAX
    (EOVERFLOW), neither READ nor WRITE (EINVAL), the source IOAS (ENOENT), its pages
    (iopt_get_pages: ENOENT unless contiguous), the destination IOAS (ENOENT), then
    iopt_map_pages into it -- the new areas share the source's iopt_pages."""
    if cmd.flags & ~_MAP_FLAGS:
        raise KernelErr(errno.EOPNOTSUPP, "unknown IOAS_COPY flags")
    if cmd.length >= ULONG_MAX or cmd.src_iova >= ULONG_MAX or cmd.dst_iova >= ULONG_MAX:
        raise KernelErr(errno.EOVERFLOW, "length or an iova >= ULONG_MAX")
    if not cmd.flags & (PROT_WRITE | PROT_READ):
        raise KernelErr(errno.EINVAL, "IOAS_COPY needs READABLE or WRITEABLE")
    src = ctx.get(cmd.src_ioas_id, OBJ_IOAS)
    elms = src.iopt.get_pages(cmd.src_iova, cmd.length)
    dst = ctx.get(cmd.dst_ioas_id, OBJ_IOAS)
    fixed = cmd.flags & uapi.IOMMU_IOAS_MAP_FIXED_IOVA
    ctx.host.fallible("area alloc")
    cmd.dst_iova = dst.iopt.map_pages(ctx.host, elms, cmd.length, cmd.dst_iova if fixed else None,
                                      cmd.flags & (PROT_WRITE | PROT_READ), max_alloc_alignment(ctx.host))


def ioas_iova_ranges(ctx: IommufdCtx, cmd: uapi.iommu_ioas_iova_ranges) -> None:
    """iommufd_ioas_iova_ranges: __reserved (EOPNOTSUPP), the IOAS (ENOENT); the holes of the
    reserved ranges go to allowed_iovas (copy_to_user, EFAULT) as far as num_iovas lets them,
    num_iovas and out_iova_alignment are written back, and EMSGSIZE follows when the array
    was too small (KernelErr.respond: the struct is copied back before the error)."""
    if getattr(cmd, "__reserved"):
        raise KernelErr(errno.EOPNOTSUPP, "non-zero __reserved")
    ioas = ctx.get(cmd.ioas_id, OBJ_IOAS)
    max_iovas = cmd.num_iovas
    cmd.out_iova_alignment = ioas.iopt.iova_alignment
    holes = ioas.iopt.iova_ranges()
    shown = holes[:max_iovas]
    if shown:
        ctx.host.mem.write(cmd.allowed_iovas, b"".join(
            bytes(uapi.iommu_iova_range(s, l)) for s, l in shown))
    cmd.num_iovas = len(holes)
    if len(holes) > max_iovas:
        raise KernelErr(errno.EMSGSIZE, f"{len(holes)} ranges, room for {max_iovas}", respond=True)


def ioas_allow_iovas(ctx: IommufdCtx, cmd: uapi.iommu_ioas_allow_iovas) -> None:
    """iommufd_ioas_allow_iovas: __reserved (EOPNOTSUPP), the IOAS (ENOENT), then each range
    read from allowed_iovas (copy_from_user, EFAULT): start >= last or overlapping an earlier
    one -> EINVAL; iopt_set_allow_iova swaps the set in unless a reserved range intersects
    it (EADDRINUSE).  num_iovas 0 clears the set."""
    if getattr(cmd, "__reserved"):
        raise KernelErr(errno.EOPNOTSUPP, "non-zero __reserved")
    ioas = ctx.get(cmd.ioas_id, OBJ_IOAS)
    ranges = []
    for i in range(cmd.num_iovas):
        r = uapi.iommu_iova_range.from_buffer_copy(ctx.host.mem.read(cmd.allowed_iovas + i * _IOVA_RANGE,
                                                                     _IOVA_RANGE))
        if r.start >= r.last:
            raise KernelErr(errno.EINVAL, f"allowed range {i}: start {r.start:#x} >= last {r.last:#x}")
        if any(s <= r.last and l >= r.start for s, l in ranges):
            raise KernelErr(errno.EINVAL, f"allowed range {i} overlaps an earlier one")
        ranges.append((r.start, r.last))
    ioas.iopt.set_allow_iova(ranges)


def ioas_option_huge_pages(cmd: uapi.iommu_option, ioas) -> None:
    """iommufd_ioas_option_huge_pages: GET -> !disable_large_pages; SET 0 disables
    (iopt_disable_large_pages: EINVAL with mapped domains, EADDRINUSE misaligned), SET 1
    enables, other values EINVAL; other ops EOPNOTSUPP."""
    if cmd.op == uapi.IOMMU_OPTION_OP_GET:
        cmd.val64 = int(not ioas.iopt.disable_large_pages)
    elif cmd.op == uapi.IOMMU_OPTION_OP_SET:
        if cmd.val64 == 0:
            ioas.iopt.disable_large_pages_()
        elif cmd.val64 == 1:
            ioas.iopt.enable_large_pages()
        else:
            raise KernelErr(errno.EINVAL, f"HUGE_PAGES takes 0 or 1, not {cmd.val64}")
    else:
        raise KernelErr(errno.EOPNOTSUPP, f"unknown option op {cmd.op}")


def ioas_option(ctx: IommufdCtx, cmd: uapi.iommu_option) -> None:
    """iommufd_ioas_option: the IOAS (object_id, ENOENT), then the per-IOAS option."""
    ioas = ctx.get(cmd.object_id, OBJ_IOAS)
    if cmd.option_id == uapi.IOMMU_OPTION_HUGE_PAGES:
        ioas_option_huge_pages(cmd, ioas)
    else:
        raise KernelErr(errno.EOPNOTSUPP, f"unknown IOAS option {cmd.option_id}")


def ioas_unmap(ctx: IommufdCtx, cmd: uapi.iommu_ioas_unmap) -> None:
    """iommufd_ioas_unmap: 0/U64_MAX unmaps all; else whole areas only, ENOENT if none."""
    ioas = ctx.get(cmd.ioas_id, OBJ_IOAS)
    iova, length = cmd.iova, cmd.length
    if iova == 0 and length == (1 << 64) - 1:
        unmapped = ioas.iopt.unmap_all()
    else:
        if iova >= ULONG_MAX or length >= ULONG_MAX:
            raise KernelErr(errno.EOVERFLOW, "iova or length >= ULONG_MAX")
        unmapped = ioas.iopt.unmap(iova, length)
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
