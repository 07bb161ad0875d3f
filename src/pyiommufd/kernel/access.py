"""struct iommufd_access: an in-kernel user of an IOAS (mdev-style drivers, the selftest's
access fds).  Mirrors the access half of drivers/iommu/iommufd/device.c (6.12.117).

An access is an object in the ctx's table (IOMMUFD_OBJ_ACCESS, no uAPI of its own) whose
driver is a user until iommufd_access_destroy; it holds a reference on the ctx.  Attached to
an IOAS it raises the IOAS's iova_alignment (PAGE_SIZE when it pins pages), pins pages through
its areas and reads and writes the memory behind them; an unmap of an area it pins calls the
driver's ``unmap`` op, which must unpin (io_pagetable.IoPagetable._unmap_range).
"""
from __future__ import annotations

import errno

from .err import KernelErr
from .io_pagetable import PROT_READ, PROT_WRITE, ULONG_MAX
from .main import OBJ_ACCESS, OBJ_IOAS, IommufdCtx, Obj
from .pages import PAGE_SIZE

ACCESS_RW_WRITE = 1 << 0       # IOMMUFD_ACCESS_RW_WRITE
ACCESS_RW_KTHREAD = 1 << 1     # IOMMUFD_ACCESS_RW_KTHREAD
ACCESS_RW_SLOW_PATH = 1 << 2   # __IOMMUFD_ACCESS_RW_SLOW_PATH (CONFIG_IOMMUFD_TEST)


class Access(Obj):
    """struct iommufd_access.  ``ops`` is the driver's: an object with ``needs_pin_pages`` and
    ``unmap(access, iova, length)``.  ``ioas`` / ``ioas_unpin`` as in the kernel (they differ
    only during a concurrent detach, which a sequential model never sees)."""

    __slots__ = ("ctx", "ops", "ioas", "ioas_unpin", "iova_alignment")

    def __init__(self, ctx: IommufdCtx, ops):
        super().__init__(OBJ_ACCESS)
        self.ctx = ctx
        self.ops = ops
        self.ioas = None
        self.ioas_unpin = None
        self.iova_alignment = PAGE_SIZE if ops.needs_pin_pages else 1

    def destroy(self, ctx: IommufdCtx) -> None:
        """iommufd_access_destroy_object: detach from the IOAS, drop the ctx reference."""
        if self.ioas is not None:
            change_ioas(self, None)
        ctx.host.put_ctx(ctx)   # pairs with the ctx reference taken in access_create

    def notify_unmap(self, iova: int, length: int) -> None:
        """The driver's unmap op, as iommufd_access_notify_unmap calls it."""
        self.ops.unmap(self, iova, length)

    def snapshot(self):
        return (self.ioas.id if self.ioas else None, self.iova_alignment, self.ops.snapshot())


def access_create(ctx: IommufdCtx, ops) -> Access:
    """iommufd_access_create: a finalized ACCESS object; the driver is a user until
    access_destroy and the access holds the ctx (iommufd_ctx_get)."""
    access = ctx.alloc(Access(ctx, ops))
    access.users += 1   # the calling driver, until access_destroy
    ctx.refs += 1       # iommufd_ctx_get, put in Access.destroy
    ctx.finalize(access)
    return access


def access_destroy(access: Access) -> None:
    """iommufd_access_destroy -> iommufd_object_destroy_user: the driver's user goes and the
    object is destroyed now (the kernel waits for other short-term users; there are none)."""
    ctx = access.ctx
    access.users -= 1
    ctx.objects.pop(access.id, None)
    access.destroy(ctx)


def change_ioas(access: Access, new_ioas) -> None:
    """iommufd_access_change_ioas: join the new IOAS's access list (iopt_add_access, which may
    raise the alignment: EADDRINUSE), then let go of the old one -- the driver's unmap op over
    everything first, so it unpins -- moving the IOAS user along."""
    cur = access.ioas
    if cur is new_ioas:
        return
    access.ioas = None
    if new_ioas is not None:
        try:
            new_ioas.iopt.add_access(access)
        except KernelErr:
            access.ioas = cur
            raise
        new_ioas.users += 1   # put below when the access moves on or is destroyed
    if cur is not None:
        access.ops.unmap(access, 0, ULONG_MAX)
        cur.iopt.remove_access(access)
        cur.users -= 1
    access.ioas = access.ioas_unpin = new_ioas


def access_attach(access: Access, ioas_id: int) -> None:
    """iommufd_access_attach: EINVAL when attached already; the IOAS lookup (ENOENT)."""
    if access.ioas is not None:
        raise KernelErr(errno.EINVAL, "access already attached")
    change_ioas(access, access.ctx.get(ioas_id, OBJ_IOAS))


def access_replace(access: Access, ioas_id: int) -> None:
    """iommufd_access_replace: ENOENT when not attached; the IOAS lookup (ENOENT)."""
    if access.ioas is None:
        raise KernelErr(errno.ENOENT, "access not attached")
    change_ioas(access, access.ctx.get(ioas_id, OBJ_IOAS))


def _check_prot(prot: int, flags: int) -> bool:
    """check_area_prot."""
    return bool(prot & (PROT_WRITE if flags & ACCESS_RW_WRITE else PROT_READ))


def _range(iova: int, length: int) -> int:
    if not length:
        raise KernelErr(errno.EINVAL, "length 0")
    last = iova + length - 1
    if last > ULONG_MAX:
        raise KernelErr(errno.EOVERFLOW, "iova + length overflows")
    return last


def pin_pages(access: Access, iova: int, length: int, flags: int) -> list[tuple[object, int]]:
    """iommufd_access_pin_pages: EINVAL for an access without pin support, length 0, an area
    being unmapped or one not page aligned at the range's ends; EOVERFLOW; ENOENT detached or
    not fully mapped; EPERM against the area's prot; then iopt_area_add_access per area (all or
    nothing).  Returns the pinned pages as (address space, user page address)."""
    if access.iova_alignment != PAGE_SIZE:
        raise KernelErr(errno.EINVAL, "this access cannot pin pages (WARN_ON)")
    last = _range(iova, length)
    if access.ioas is None:
        raise KernelErr(errno.ENOENT, "access not attached")
    iopt = access.ioas.iopt
    areas, done = iopt.contig_areas(iova, last)
    added = []
    out = []
    try:
        for a_start, a_last, prot, area, cur in areas:
            a_end = min(last, a_last)
            first_byte = iopt.start_byte(a_start, cur)
            # iopt_area_contig_is_aligned: starts on a page; ends on one unless it is the last
            aligned = first_byte % PAGE_SIZE == 0 and (
                last <= a_last or iopt.start_byte(a_start, a_last) % PAGE_SIZE == PAGE_SIZE - 1)
            if area.prevent_access or not aligned:
                raise KernelErr(errno.EINVAL, "area being unmapped or not page aligned")
            if not _check_prot(prot, flags):
                raise KernelErr(errno.EPERM, "access direction not allowed by the mapping")
            index, last_index = first_byte // PAGE_SIZE, iopt.start_byte(a_start, a_end) // PAGE_SIZE
            area.pages.add_access(access.ctx.host, index, last_index, bool(flags & ACCESS_RW_WRITE))
            area.num_accesses += 1
            added.append((area, index, last_index))
            out += [(area.pages.mm, area.pages.uptr + i * PAGE_SIZE) for i in range(index, last_index + 1)]
        if not done:
            raise KernelErr(errno.ENOENT, "range not fully mapped")
    except KernelErr:
        for area, index, last_index in added:
            area.pages.remove_access(index, last_index)
            area.num_accesses -= 1
        raise
    return out


def unpin_pages(access: Access, iova: int, length: int) -> None:
    """iommufd_access_unpin_pages: iopt_area_remove_access over the contiguous areas of the
    range in ioas_unpin (a misuse is a WARN_ON in the kernel: an AssertionError here)."""
    if not length or iova + length - 1 > ULONG_MAX:
        raise AssertionError("iommufd_access_unpin_pages: bad range (WARN_ON)")
    last = iova + length - 1
    if access.ioas_unpin is None:
        raise AssertionError("iommufd_access_unpin_pages before attach (WARN_ON)")
    iopt = access.ioas_unpin.iopt
    areas, done = iopt.contig_areas(iova, last)
    for a_start, a_last, _, area, cur in areas:
        area.pages.remove_access(iopt.start_byte(a_start, cur) // PAGE_SIZE,
                                 iopt.start_byte(a_start, min(last, a_last)) // PAGE_SIZE)
        area.num_accesses -= 1
    if not done:
        raise AssertionError("iommufd_access_unpin_pages: range not contiguous (WARN_ON)")


def access_rw(access: Access, iova: int, data: bytes | None, length: int, flags: int) -> bytes:
    """iommufd_access_rw: EINVAL for length 0 or an area being unmapped, EOVERFLOW, ENOENT
    detached or not fully mapped, EPERM against the area's prot; iopt_pages_rw_access per area
    (writes ``data``; reads return the bytes).  Data already copied stays copied on a failure."""
    last = _range(iova, length)
    if access.ioas is None:
        raise KernelErr(errno.ENOENT, "access not attached")
    iopt = access.ioas.iopt
    areas, done = iopt.contig_areas(iova, last)
    write = bool(flags & ACCESS_RW_WRITE)
    out = []
    off = 0
    for a_start, a_last, prot, area, cur in areas:
        n = min(last, a_last) - cur + 1
        if area.prevent_access:
            raise KernelErr(errno.EINVAL, "area being unmapped")
        if not _check_prot(prot, flags):
            raise KernelErr(errno.EPERM, "access direction not allowed by the mapping")
        chunk = data[off:off + n] if write else None
        out.append(area.pages.rw(access.ctx.host, iopt.start_byte(a_start, cur), chunk, n, write))
        off += n
    if not done:
        raise KernelErr(errno.ENOENT, "range not fully mapped")
    return b"".join(out)
