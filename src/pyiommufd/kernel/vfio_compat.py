"""The VFIO type1 container ioctls on an iommufd fd (drivers/iommu/iommufd/vfio_compat.c,
6.12.117): iommufd_fops_ioctl hands every request number outside its own table to
iommufd_vfio_ioctl, which acts on the ctx's compat IOAS (IOMMU_VFIO_IOAS SET, or the IOAS a
VFIO group container created).

``buf`` conventions (host.ARG_IS_VALUE / ARGSZ_MINSZ): VFIO_SET_IOMMU and VFIO_CHECK_EXTENSION
use the ioctl argument as a number, passed as 8 little-endian bytes; the type1 structs come
as the caller's memory at arg, max(argsz, minsz) bytes.  IOMMU_VFIO_IOAS itself is
ioas.vfio_ioas.  No NOIOMMU mode: CONFIG_VFIO_NOIOMMU is off in the modelled kernels.
"""
from __future__ import annotations

import ctypes
import errno

from .. import uapi
from .err import KernelErr
from .io_pagetable import PROT_READ, PROT_WRITE, ULONG_MAX
from .pages import PAGE_SIZE

ARGSZ_MINSZ = {
    uapi.VFIO_IOMMU_GET_INFO: uapi.offsetofend(uapi.vfio_iommu_type1_info, "iova_pgsizes"),
    uapi.VFIO_IOMMU_MAP_DMA: uapi.offsetofend(uapi.vfio_iommu_type1_dma_map, "size"),
    uapi.VFIO_IOMMU_UNMAP_DMA: uapi.offsetofend(uapi.vfio_iommu_type1_dma_unmap, "size"),
}
DMA_AVAIL = 0xFFFFFFFF   # iommufd_fill_cap_dma_avail: U32_MAX


def get_compat_ioas(ctx):
    """get_compat_ioas: the ctx's VFIO compat IOAS, ENODEV without one."""
    if ctx.vfio_ioas is None:
        raise KernelErr(errno.ENODEV, "no VFIO compat IOAS (IOMMU_VFIO_IOAS SET, or a VFIO group)")
    return ctx.vfio_ioas


def _value(buf) -> int:
    mv = memoryview(buf).cast("B")
    return int.from_bytes(bytes(mv[:8]), "little")


def _copy_in(buf, kstruct, minsz: int):
    """copy_from_user(&s, arg, minsz): EFAULT when the caller's buffer is shorter."""
    mv = memoryview(buf).cast("B")
    if len(mv) < minsz:
        raise KernelErr(errno.EFAULT, f"argument shorter than minsz {minsz}")
    return kstruct.from_buffer_copy(bytes(mv[:minsz]) + bytes(ctypes.sizeof(kstruct) - minsz)), mv


def check_extension(ctx, ext: int) -> int:
    """iommufd_vfio_check_extension: TYPE1, TYPE1v2 and UNMAP_ALL -> 1; DMA_CC_IOMMU -> whether
    every HWPT on the compat IOAS enforces coherency (ENODEV without one); the rest -> 0."""
    if ext in (uapi.VFIO_TYPE1_IOMMU, uapi.VFIO_TYPE1v2_IOMMU, uapi.VFIO_UNMAP_ALL):
        return 1
    if ext == uapi.VFIO_DMA_CC_IOMMU:
        ioas = get_compat_ioas(ctx)
        return int(all(h.enforce_cc for h in ioas.hwpt_list))
    return 0


def set_iommu(ctx, kind: int) -> None:
    """iommufd_vfio_set_iommu: only TYPE1 / TYPE1v2 (EINVAL); ENODEV without a compat IOAS;
    TYPE1 (v1) may unmap inside a mapping, so large pages are disabled on the IOAS
    (iopt_disable_large_pages: EINVAL once domains hold mappings)."""
    if kind not in (uapi.VFIO_TYPE1_IOMMU, uapi.VFIO_TYPE1v2_IOMMU):
        raise KernelErr(errno.EINVAL, f"VFIO_SET_IOMMU {kind}: only TYPE1 and TYPE1v2")
    ioas = get_compat_ioas(ctx)
    if kind == uapi.VFIO_TYPE1_IOMMU:
        ioas.iopt.disable_large_pages_()


def map_dma(ctx, buf) -> None:
    """iommufd_vfio_map_dma: argsz below minsz or unknown flags -> EINVAL; ENODEV without a
    compat IOAS; iopt_map_user_pages at the fixed IOVA (no READ/WRITE is allowed here)."""
    from .ioas import map_user_pages
    minsz = ARGSZ_MINSZ[uapi.VFIO_IOMMU_MAP_DMA]
    m, _ = _copy_in(buf, uapi.vfio_iommu_type1_dma_map, minsz)
    if m.argsz < minsz or m.flags & ~(uapi.VFIO_DMA_MAP_FLAG_READ | uapi.VFIO_DMA_MAP_FLAG_WRITE):
        raise KernelErr(errno.EINVAL, "argsz below minsz or unsupported flags")
    prot = (PROT_READ if m.flags & uapi.VFIO_DMA_MAP_FLAG_READ else 0) | \
           (PROT_WRITE if m.flags & uapi.VFIO_DMA_MAP_FLAG_WRITE else 0)
    ioas = get_compat_ioas(ctx)
    ctx.host.fallible("area alloc")
    map_user_pages(ctx, ioas, m.iova, m.vaddr, m.size, prot)


def unmap_dma(ctx, buf) -> None:
    """iommufd_vfio_unmap_dma: argsz below minsz or flags other than UNMAP_ALL -> EINVAL;
    ENODEV without a compat IOAS; UNMAP_ALL needs iova = size = 0 (EINVAL); otherwise, with
    large pages disabled (TYPE1), cut the areas at both ends of the range first
    (iopt_cut_iova), then iopt_unmap_iova -- an empty range is success here.  ``size`` is
    written back with the bytes unmapped, also when the unmap failed part way."""
    minsz = ARGSZ_MINSZ[uapi.VFIO_IOMMU_UNMAP_DMA]
    u, mv = _copy_in(buf, uapi.vfio_iommu_type1_dma_unmap, minsz)
    if u.argsz < minsz or u.flags & ~uapi.VFIO_DMA_UNMAP_FLAG_ALL:
        raise KernelErr(errno.EINVAL, "argsz below minsz or unsupported flags")
    ioas = get_compat_ioas(ctx)
    iopt = ioas.iopt
    err = None
    unmapped = 0
    if u.flags & uapi.VFIO_DMA_UNMAP_FLAG_ALL:
        if u.iova or u.size:
            raise KernelErr(errno.EINVAL, "UNMAP_FLAG_ALL needs iova and size 0")
        unmapped = iopt.unmap_all()
    else:
        if iopt.disable_large_pages:
            end = (u.iova + u.size - 1) & ULONG_MAX
            iopt.cut_iova([end, u.iova - 1] if u.iova else [end])
        try:
            unmapped = iopt.unmap(u.iova, u.size)
        except KernelErr as e:
            err, unmapped = e, e.partial or 0
    u.size = unmapped
    mv[:minsz] = bytes(u)[:minsz]   # copy_to_user(arg, &unmap, minsz), also before an error
    if err is not None:
        err.respond = True
        raise err


def _pagesizes(ioas) -> int:
    """iommufd_get_pagesizes: the domains' common page sizes, sub-page sizes folded into
    PAGE_SIZE, at least the IOAS's iova_alignment."""
    bitmap = ULONG_MAX
    for d in ioas.iopt.domains:
        bitmap &= getattr(d, "pgsize_bitmap", None) or (ULONG_MAX & ~(d.min_page_size - 1))
    if bitmap & (PAGE_SIZE - 1):
        bitmap = (bitmap & ~(PAGE_SIZE - 1)) | PAGE_SIZE
    return max(bitmap, ioas.iopt.iova_alignment)


def get_info(ctx, buf) -> None:
    """iommufd_vfio_iommu_get_info: argsz below minsz -> EINVAL; ENODEV without a compat IOAS;
    the capability chain (DMA_AVAIL, then IOVA_RANGE with the IOAS's usable ranges) is written
    after the struct as far as argsz lets each cap fit, chained by ``next``; argsz comes back
    as the size of the whole chain, cap_offset only when it all fit; min(argsz, sizeof(info))
    bytes of the struct are copied back."""
    minsz = ARGSZ_MINSZ[uapi.VFIO_IOMMU_GET_INFO]
    info, mv = _copy_in(buf, uapi.vfio_iommu_type1_info, minsz)
    if info.argsz < minsz:
        raise KernelErr(errno.EINVAL, "argsz below minsz")
    out_len = min(info.argsz, ctypes.sizeof(info))
    ioas = get_compat_ioas(ctx)
    argsz = info.argsz
    if len(mv) < min(argsz, ctypes.sizeof(info)):
        raise KernelErr(errno.EFAULT, "argument shorter than argsz")
    info.flags = uapi.VFIO_IOMMU_INFO_PGSIZES
    info.iova_pgsizes = _pagesizes(ioas)
    info.cap_offset = 0

    def put(off: int, data: bytes) -> None:   # copy_to_user into the caller's argsz bytes
        if off + len(data) > len(mv):
            raise KernelErr(errno.EFAULT, "capability beyond the caller's buffer")
        mv[off:off + len(data)] = data

    def cap_dma_avail(off: int, avail: int) -> int:
        cap = uapi.vfio_iommu_type1_info_dma_avail(uapi.vfio_info_cap_header(
            uapi.VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL, 1, 0), DMA_AVAIL)
        if avail >= ctypes.sizeof(cap):
            put(off, bytes(cap))
        return ctypes.sizeof(cap)

    def cap_iova(off: int, avail: int) -> int:
        head = ctypes.sizeof(uapi.vfio_iommu_type1_info_cap_iova_range)
        rsize = ctypes.sizeof(uapi.vfio_iova_range)
        ranges = ioas.iopt.iova_ranges()
        for n, (s, l) in enumerate(ranges):
            if avail >= head + (n + 1) * rsize:
                put(off + head + n * rsize, bytes(uapi.vfio_iova_range(s, l)))
        size = head + len(ranges) * rsize
        if avail >= size:
            put(off, bytes(uapi.vfio_iommu_type1_info_cap_iova_range(uapi.vfio_info_cap_header(
                uapi.VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE, 1, 0), len(ranges), 0)))
        return size

    total = ctypes.sizeof(info)
    last_cap = None
    for fill in (cap_dma_avail, cap_iova):
        size = fill(total, argsz - total) if argsz > total else fill(total, 0)
        size = (size + 7) & ~7
        if last_cap is not None and argsz >= total:   # put_user(total, &last_cap->next)
            put(last_cap + uapi.vfio_info_cap_header.next.offset, total.to_bytes(4, "little"))
        last_cap = total
        total += size
    if argsz >= total:
        info.cap_offset = ctypes.sizeof(info)
    info.argsz = total
    info.flags |= uapi.VFIO_IOMMU_INFO_CAPS
    mv[:out_len] = bytes(info)[:out_len]


def vfio_ioctl(ctx, request: int, buf) -> int:
    """iommufd_vfio_ioctl: the ioctl's return value for the numeric ones; ENOTTY
    (-ENOIOCTLCMD) for anything else, VFIO_IOMMU_DIRTY_PAGES included."""
    if request == uapi.VFIO_GET_API_VERSION:
        return uapi.VFIO_API_VERSION
    if request == uapi.VFIO_SET_IOMMU:
        set_iommu(ctx, _value(buf))
        return 0
    if request == uapi.VFIO_CHECK_EXTENSION:
        return check_extension(ctx, _value(buf))
    if request == uapi.VFIO_IOMMU_GET_INFO:
        get_info(ctx, buf)
        return 0
    if request == uapi.VFIO_IOMMU_MAP_DMA:
        map_dma(ctx, buf)
        return 0
    if request == uapi.VFIO_IOMMU_UNMAP_DMA:
        unmap_dma(ctx, buf)
        return 0
    raise KernelErr(errno.ENOTTY, "not an iommufd or VFIO container ioctl")
