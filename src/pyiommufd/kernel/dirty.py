"""Dirty tracking through a HWPT: iopt_set_dirty_tracking / iopt_read_and_clear_dirty_data
(drivers/iommu/iommufd/io_pagetable.c) and the user bitmap (iova_bitmap.c), 6.12.117.

Only the selftest mock's domains implement dirty_ops here; an Intel domain allocated with
DIRTY_TRACKING (SSADS) has them in the kernel but not in the model (EmulationGap).
"""
from __future__ import annotations

import errno

from ..errors import EmulationGap
from .drivers import mock
from .err import KernelErr

ULONG_MAX = (1 << 64) - 1


def _dirty_ops(domain):
    """domain->dirty_ops: the mock's module for a mock domain allocated with DIRTY_TRACKING."""
    if isinstance(domain, mock.MockDomain):
        return mock if domain.dirty_ops else None
    if domain.dirty_tracking:
        raise EmulationGap(f"dirty tracking of {domain.driver} domains is not modelled")
    return None


def set_dirty_tracking(host, iopt, domain, enable: bool) -> None:
    """iopt_set_dirty_tracking: no dirty_ops -> EOPNOTSUPP; enabling first clears the dirty bits
    of every area (iopt_clear_dirty_data), then ops->set_dirty_tracking."""
    ops = _dirty_ops(domain)
    if ops is None:
        raise KernelErr(errno.EOPNOTSUPP, "the domain has no dirty tracking")
    if enable:
        ptes = ops.MockPtes(domain, iopt, host.mem)
        for s, (l, _) in list(iopt.areas.items()):
            ops.read_and_clear_dirty(domain, ptes, s, l - s + 1, 0, None)
    ops.set_dirty_tracking(domain, enable)


def check_iova_range(iopt, cmd) -> None:
    """iommufd_check_iova_range: length 0 EINVAL; overflow EOVERFLOW; iova/end not aligned to
    the IOAS's iova_alignment or to page_size (0: EINVAL) -> EINVAL."""
    if not cmd.length:
        raise KernelErr(errno.EINVAL, "length 0")
    last = cmd.iova + cmd.length - 1
    if last > ULONG_MAX:
        raise KernelErr(errno.EOVERFLOW, "iova + length overflows")
    align = iopt.iova_alignment
    if cmd.iova & (align - 1) or (last + 1) & (align - 1):
        raise KernelErr(errno.EINVAL, f"range not aligned to the IOAS's iova_alignment {align}")
    if not cmd.page_size:
        raise KernelErr(errno.EINVAL, "page_size 0")
    if cmd.iova & (cmd.page_size - 1) or (last + 1) & (cmd.page_size - 1):
        raise KernelErr(errno.EINVAL, "range not aligned to page_size")


class IovaBitmap:
    """struct iova_bitmap over the user's bitmap at ``data``: bit i stands for the page of
    ``page_size`` at iova + i * page_size.  iova_bitmap_set ORs bits in; the model reads the
    whole bitmap (mapped_total_index u64 words) once and writes it back once at the end.  A
    bitmap that cannot be pinned (EFAULT) is silently not written, as iova_bitmap_get's failure
    is swallowed by iova_bitmap_set.  (The kernel may also set bits past the last word, inside
    the pinned page; the model keeps to the words.)"""

    __slots__ = ("iova", "length", "pgshift", "data", "words", "bits", "host")

    def __init__(self, host, iova: int, length: int, page_size: int, data: int):
        self.host = host
        self.iova, self.length, self.data = iova, length, data
        self.pgshift = (page_size & -page_size).bit_length() - 1      # __ffs(page_size)
        self.words = (((length - 1) >> self.pgshift) // 64) + 1        # mapped_total_index
        self.bits: set[int] = set()

    def set(self, iova: int, length: int) -> None:
        """iova_bitmap_set: the bits of [iova, iova + length - 1]; nothing from a word past the end."""
        first = (iova - self.iova) >> self.pgshift
        last = (iova + length - 1 - self.iova) >> self.pgshift
        if first // 64 >= self.words:
            return
        self.bits.update(b for b in range(first, last + 1) if b // 64 < self.words)

    def flush(self) -> None:
        if not self.bits:
            return
        try:
            buf = bytearray(self.host.mem.read(self.data, self.words * 8))
        except KernelErr:
            return
        for b in self.bits:
            buf[b // 8] |= 1 << (b % 8)
        try:
            self.host.mem.write(self.data, bytes(buf))
        except KernelErr:
            pass


def read_and_clear_dirty_data(host, iopt, domain, flags: int, cmd) -> None:
    """iopt_read_and_clear_dirty_data -> iommu_read_and_clear_dirty: the range checks, no
    dirty_ops -> EOPNOTSUPP, then ops->read_and_clear_dirty over the areas back to back from
    ``iova`` (__iommu_read_and_clear_dirty; a hole ends the walk).  6.12.117 ignores what
    iova_bitmap_for_each returns, so a walk stopped by a hole or by tracking being off
    still returns 0."""
    check_iova_range(iopt, cmd)
    ops = _dirty_ops(domain)
    if ops is None:
        raise KernelErr(errno.EOPNOTSUPP, "the domain has no dirty tracking")
    bitmap = IovaBitmap(host, cmd.iova, cmd.length, cmd.page_size, cmd.data)
    ptes = ops.MockPtes(domain, iopt, host.mem)
    last_iova = cmd.iova + cmd.length - 1
    areas, _ = iopt.contig_areas(cmd.iova, last_iova)
    try:
        for _start, a_last, _prot, _src, cur in areas:
            last = min(last_iova, a_last)
            ops.read_and_clear_dirty(domain, ptes, cur, last - cur + 1, flags, bitmap.set)
    except KernelErr:
        pass
    bitmap.flush()
