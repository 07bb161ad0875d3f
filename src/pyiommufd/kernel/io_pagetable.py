"""struct io_pagetable: the IOVA -> user memory map of one IOAS.

Mirrors drivers/iommu/iommufd/io_pagetable.c (read at 6.12.117).  Areas live in a
sorted map keyed by first IOVA (areamap.AreaMap), so map, unmap and the overlap checks
cost O(log n) in the number of areas (the kernel uses an interval tree).
"""
from __future__ import annotations

import errno

from .areamap import AreaMap
from .err import KernelErr

ULONG_MAX = (1 << 64) - 1
PAGE_SIZE = 4096
# iopt_alloc_iova caps the alignment it picks at HPAGE_SIZE with THP, PAGE_SIZE
# without.  The conformance kernel (tinyconfig) has no THP, so PAGE_SIZE.
MAX_ALLOC_ALIGNMENT = PAGE_SIZE


class IoPagetable:
    """Areas, reserved ranges, the domains to keep filled, and iova_alignment."""

    __slots__ = ("areas", "reserved", "iova_alignment", "domains", "outside")

    def __init__(self) -> None:
        self.areas = AreaMap()                  # start -> (last, prot)
        self.reserved: list[tuple[int, int, str]] = []  # (start, last, owner device name)
        self.iova_alignment = 1                 # iopt_init_table
        self.domains: list = []                 # driver domains mirrored from the areas
        # Ranges outside a filled domain's aperture, reserved by iopt_table_add_domain with the
        # domain as owner: (start, last, domain serial).  Kept apart from the per-device ranges.
        self.outside: list[tuple[int, int, int]] = []

    def __deepcopy__(self, memo):
        new = IoPagetable.__new__(IoPagetable)
        new.areas = self.areas.copy()
        new.reserved = list(self.reserved)
        new.iova_alignment = self.iova_alignment
        new.outside = list(self.outside)
        from copy import deepcopy
        new.domains = deepcopy(self.domains, memo)
        return new

    # -- lookups ----------------------------------------------------------------
    def area_iter_first(self, start: int, last: int):
        """iopt_area_iter_first: the lowest area intersecting [start, last], or None."""
        areas = self.areas
        a_start = areas.floor(start)
        if a_start is not None:
            a_last, prot = areas[a_start]
            if a_last >= start:
                return a_start, a_last, prot
        a_start = areas.higher(start)
        if a_start is not None and a_start <= last:
            a_last, prot = areas[a_start]
            return a_start, a_last, prot
        return None

    def reserved_iter_first(self, start: int, last: int):
        for r in self.reserved + self.outside:
            if r[0] <= last and r[1] >= start:
                return r
        return None

    # -- map --------------------------------------------------------------------
    def check_iova(self, iova: int, length: int) -> None:
        """iopt_check_iova (6.12.117): alignment, overflow, reserved (EINVAL), overlap (EEXIST)."""
        if iova & (self.iova_alignment - 1):
            raise KernelErr(errno.EINVAL, "iova not aligned to the IOAS's iova_alignment")
        last = iova + length - 1
        if last > ULONG_MAX:
            raise KernelErr(errno.EOVERFLOW, "iova + length overflows")
        if self.reserved_iter_first(iova, last):
            raise KernelErr(errno.EINVAL, "range intersects a reserved IOVA range")
        if self.area_iter_first(iova, last):
            raise KernelErr(errno.EEXIST, "range overlaps an existing mapping")

    def alloc_iova(self, uptr: int, length: int) -> int:
        """iopt_alloc_iova (6.12.117, no allowed_iovas): first hole from PAGE_SIZE up."""
        if length == 0 or length >= ULONG_MAX // 2:
            raise KernelErr(errno.EOVERFLOW, "length out of range for IOVA allocation")
        page_offset = uptr % PAGE_SIZE
        align = 1 << (length - 1).bit_length()
        if uptr:
            align = min(align, uptr & -uptr)
        align = min(align, MAX_ALLOC_ALIGNMENT)
        if align < self.iova_alignment:
            raise KernelErr(errno.EINVAL, "user address alignment below the IOAS's iova_alignment")
        used = sorted([(s, v[0]) for s, v in self.areas.items()]
                      + [(r[0], r[1]) for r in self.reserved + self.outside])
        cursor, end = PAGE_SIZE, ULONG_MAX - PAGE_SIZE
        for u_start, u_last in used + [(end + 1, end + 1)]:
            hole_last = min(u_start - 1, end)
            start = ((cursor + align - 1) & ~(align - 1)) | page_offset
            if start < hole_last and hole_last - start >= length - 1:
                return start
            cursor = max(cursor, u_last + 1)
        raise KernelErr(errno.ENOSPC, "no free IOVA hole")

    def map(self, iova: int | None, uptr: int, length: int, prot: int) -> int:
        """iopt_map_user_pages -> iopt_alloc_area_pages + iopt_fill_domains.

        Order of checks as in iopt_alloc_area_pages: length vs alignment / zero
        (EINVAL), then the IOVA (allocated, or checked when fixed)."""
        if (length & (self.iova_alignment - 1)) or not length:
            raise KernelErr(errno.EINVAL, "length zero or not aligned to iova_alignment")
        if iova is None:
            iova = self.alloc_iova(uptr, length)
        else:
            self.check_iova(iova, length)
        last = iova + length - 1
        self.areas[iova] = (last, prot)
        for dom in self.domains:
            dom.map(iova, last, prot)
        return iova

    # -- unmap ------------------------------------------------------------------
    def unmap(self, iova: int, length: int) -> int:
        """iopt_unmap_iova + iopt_unmap_iova_range: whole areas only.

        Areas removed before a later one fails stay removed, as in the kernel."""
        if not length:
            raise KernelErr(errno.EINVAL, "length 0")
        last = iova + length - 1
        if last > ULONG_MAX:
            raise KernelErr(errno.EOVERFLOW, "iova + length overflows")
        return self._unmap_range(iova, last)

    def unmap_all(self) -> int:
        return self._unmap_range(0, ULONG_MAX)

    def _unmap_range(self, start: int, last: int) -> int:
        unmapped = 0
        while (area := self.area_iter_first(start, last)) is not None:
            a_start, a_last, _ = area
            if a_start < start or a_last > last:
                raise KernelErr(errno.ENOENT, "range cuts through a mapping", partial=unmapped)
            del self.areas[a_start]
            for dom in self.domains:
                dom.unmap(a_start, a_last)
            unmapped += a_last - a_start + 1
            if a_last >= last:
                break
            start = a_last + 1
        return unmapped

    # -- reserved ranges (per device, added at attach) ----------------------------
    def reserve(self, start: int, last: int, owner: str) -> None:
        """iopt_reserve_iova: EADDRINUSE if a mapping is already there."""
        if self.area_iter_first(start, last):
            raise KernelErr(errno.EADDRINUSE, f"reserved range {start:#x}-{last:#x} of {owner} is mapped")
        self.reserved.append((start, last, owner))

    def remove_reserved(self, owner: str) -> None:
        self.reserved = [r for r in self.reserved if r[2] != owner]

    # -- domains --------------------------------------------------------------------
    def add_domain(self, domain) -> None:
        """iopt_table_add_domain: raise iova_alignment to the domain's page size, reserve
        everything outside the domain's aperture (EADDRINUSE if an area is there), fill it."""
        new_align = max(domain.min_page_size, self.iova_alignment)
        if new_align > PAGE_SIZE:
            raise KernelErr(errno.EINVAL, "domain page size above PAGE_SIZE")
        if new_align != self.iova_alignment:
            mask = new_align - 1
            for s, (l, _) in self.areas.items():
                if s & mask or (l - s + 1) & mask:
                    raise KernelErr(errno.EADDRINUSE, "existing mapping not aligned to the domain's page size")
        outside = []   # iopt_reserve_iova with the domain as owner, below then above the aperture
        if domain.aperture_start != 0:
            outside.append((0, domain.aperture_start - 1))
        if domain.aperture_end != ULONG_MAX:
            outside.append((domain.aperture_end + 1, ULONG_MAX))
        for start, last in outside:
            if self.area_iter_first(start, last):
                raise KernelErr(errno.EADDRINUSE, f"a mapping lies outside the domain's aperture "
                                                  f"({domain.aperture_start:#x}-{domain.aperture_end:#x})")
        self.outside.extend((start, last, domain.serial) for start, last in outside)
        for s, (l, prot) in self.areas.items():
            domain.map(s, l, prot)
        self.domains.append(domain)
        self.iova_alignment = new_align

    def remove_domain(self, domain) -> None:
        """iopt_table_remove_domain: unfill; alignment recomputed from the remaining domains."""
        self.domains = [d for d in self.domains if d is not domain]
        self.outside = [r for r in self.outside if r[2] != domain.serial]
        for s, (l, _) in self.areas.items():
            domain.unmap(s, l)
        self.iova_alignment = max([1] + [d.min_page_size for d in self.domains])

    def snapshot(self):
        return (tuple((s, l, p) for s, (l, p) in self.areas.items()), tuple(sorted(self.reserved)),
                self.iova_alignment)
