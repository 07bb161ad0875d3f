"""struct io_pagetable: the IOVA -> user memory map of one IOAS.

Mirrors drivers/iommu/iommufd/io_pagetable.c (read at 6.12.117).  Areas live in a
sorted map keyed by first IOVA (areamap.AreaMap: start -> (last, prot)), so map, unmap and
the overlap checks cost O(log n) in the number of areas (the kernel uses an interval tree).
What each area maps lives beside it in ``area_src`` (start -> Area: the iopt_pages, the byte
offset into them, the accesses pinning through it), so the (last, prot) values stay plain
hashable tuples for the explorer's state keys.

``prot`` is the IOAS_MAP flag bits READABLE|WRITEABLE (conv_iommu_prot's IOMMU_READ/WRITE).
"""
from __future__ import annotations

import errno

from .areamap import AreaMap
from .err import KernelErr
from .pages import PAGE_SIZE, IopPages

ULONG_MAX = (1 << 64) - 1
HPAGE_SIZE = 2 << 20
PROT_WRITE = 2   # IOMMU_IOAS_MAP_WRITEABLE
PROT_READ = 4    # IOMMU_IOAS_MAP_READABLE
# iopt_alloc_iova caps the alignment it picks at HPAGE_SIZE with CONFIG_TRANSPARENT_HUGEPAGE,
# PAGE_SIZE without.  PAGE_SIZE is the in-process default (a kernel without THP; scenarios give
# every IOVA, so the corpus is the same on the conformance kernel, which has THP since the
# selftest needed it); Host.thp switches to HPAGE_SIZE, as `pyiommufd emulate` does.
MAX_ALLOC_ALIGNMENT = PAGE_SIZE
UNMAP_MAX_TRIES = 100   # iopt_unmap_iova_range: WARN_ON(tries > 100) -> EDEADLOCK


class Area:
    """The rest of struct iopt_area: ``pages``, ``start_byte`` (iopt_area_start_byte at the
    area's first IOVA: pages_node.start * PAGE_SIZE + page_offset), ``num_accesses`` and
    ``prevent_access``."""

    __slots__ = ("pages", "start_byte", "num_accesses", "prevent_access")
    _fixed = ("pages", "start_byte")   # never rebound (snapshot.fixed_slots)

    def __init__(self, pages: IopPages, start_byte: int):
        self.pages = pages
        self.start_byte = start_byte
        self.num_accesses = 0
        self.prevent_access = False

    def __deepcopy__(self, memo):
        from copy import deepcopy
        new = Area(deepcopy(self.pages, memo), self.start_byte)
        new.num_accesses, new.prevent_access = self.num_accesses, self.prevent_access
        return new

    def index_range(self, length: int) -> tuple[int, int]:
        """pages_node: the first and last page index of the pages the area covers."""
        return self.start_byte // PAGE_SIZE, (self.start_byte + length - 1) // PAGE_SIZE


def _merge(ranges):
    """Union of inclusive ranges, sorted, with touching ranges joined (interval_tree_span_iter)."""
    out = []
    for s, l in sorted(ranges):
        if out and s <= out[-1][1] + 1:
            if l > out[-1][1]:
                out[-1][1] = l
        else:
            out.append([s, l])
    return out


def _holes(used, first: int, last: int):
    """The holes of a span iteration over [first, last] given the used ranges."""
    cur = first
    for s, l in _merge(used):
        if l < cur:
            continue
        if s > last:
            break
        if s > cur:
            yield cur, s - 1
        cur = l + 1
        if cur > last or cur == 0:
            return
    if cur <= last:
        yield cur, last


def _check_range(start: int, last: int, length: int, align: int, page_offset: int):
    """__alloc_iova_check_range: the aligned start in [start, last] that fits, or None."""
    aligned = start + align - 1
    if aligned > ULONG_MAX:
        return None
    aligned = (aligned & ~(align - 1)) | page_offset
    if aligned >= last or last - aligned < length - 1:
        return None
    return aligned


class IoPagetable:
    """Areas, reserved and allowed ranges, the domains to keep filled, accesses, iova_alignment."""

    __slots__ = ("areas", "area_src", "reserved", "iova_alignment", "domains", "outside", "allowed",
                 "disable_large_pages", "accesses")
    # never rebound, changed in place (snapshot.fixed_slots: a restore writes the containers back, not the slots)
    _fixed = ("areas", "area_src", "reserved", "domains", "outside", "allowed", "accesses")

    def __init__(self) -> None:
        self.areas = AreaMap()                  # start -> (last, prot)
        self.area_src: dict[int, Area] = {}     # start -> what the area maps
        # (start, last, owner): a device name (its reserved regions), None (IOMMU_TEST_OP_ADD_RESERVED)
        self.reserved: list[tuple[int, int, str | None]] = []
        self.iova_alignment = 1                 # iopt_init_table
        self.domains: list = []                 # driver domains mirrored from the areas
        # Ranges outside a filled domain's aperture, reserved by iopt_table_add_domain with the
        # domain as owner: (start, last, domain serial).  Kept apart from the per-device ranges.
        self.outside: list[tuple[int, int, int]] = []
        self.allowed: list[tuple[int, int]] = []   # allowed_itree (IOMMU_IOAS_ALLOW_IOVAS), sorted
        self.disable_large_pages = False        # IOMMU_OPTION_HUGE_PAGES = 0, VFIO type1 (v1)
        self.accesses: list = []                # access_list: iommufd_access objects attached

    def __deepcopy__(self, memo):
        from copy import deepcopy
        new = IoPagetable.__new__(IoPagetable)
        memo[id(self)] = new
        new.areas = self.areas.copy()
        new.area_src = deepcopy(self.area_src, memo) if self.area_src else {}
        new.reserved = list(self.reserved)
        new.iova_alignment = self.iova_alignment
        new.outside = list(self.outside)
        new.allowed = list(self.allowed)
        new.disable_large_pages = self.disable_large_pages
        new.domains = deepcopy(self.domains, memo)
        new.accesses = deepcopy(self.accesses, memo)
        return new

    # -- lookups ----------------------------------------------------------------
    def area_iter_first(self, start: int, last: int):
        """iopt_area_iter_first: the lowest area intersecting [start, last], or None."""
        areas = self.areas
        if not areas:   # no area at all (every auto domain's reservation, a fresh IOAS)
            return None
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
        for r in self.reserved:
            if r[0] <= last and r[1] >= start:
                return r
        for r in self.outside:
            if r[0] <= last and r[1] >= start:
                return r
        return None

    def allowed_iter_first(self, start: int, last: int):
        for r in self.allowed:
            if r[0] <= last and r[1] >= start:
                return r
        return None

    def contig_areas(self, iova: int, last: int):
        """iopt_for_each_contig_area + iopt_area_contig_done: the areas covering [iova, last]
        back to back from the one holding ``iova`` -- [(a_start, a_last, prot, Area, cur_iova)] --
        and whether they reach ``last`` with no gap."""
        out = []
        cur = iova
        a = self.area_iter_first(cur, cur)
        while a is not None:
            a_start, a_last, prot = a
            if out and a_start != cur:
                break
            out.append((a_start, a_last, prot, self.area_src[a_start], cur))
            if last <= a_last:
                return out, True
            cur = a_last + 1
            a = self.area_iter_first(cur, last)
        return out, False

    def start_byte(self, a_start: int, iova: int) -> int:
        """iopt_area_start_byte: the byte of the area's iopt_pages under ``iova``."""
        return iova - a_start + self.area_src[a_start].start_byte

    def iova_to_user(self, iova: int):
        """The (address space, user address) an IOVA maps, or None: what a domain's IOPTE for
        ``iova`` points at (IOMMU_TEST_OP_MD_CHECK_MAP compares it with a user VA's page)."""
        a = self.area_iter_first(iova, iova)
        if a is None:
            return None
        area = self.area_src[a[0]]
        return area.pages.mm, area.pages.uptr + self.start_byte(a[0], iova)

    def all_pages(self):
        return [a.pages for a in self.area_src.values()]

    # -- IOVA allocation ----------------------------------------------------------
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

    def alloc_iova(self, uptr: int, length: int, max_alignment: int = MAX_ALLOC_ALIGNMENT) -> int:
        """iopt_alloc_iova (6.12.117): the first hole, from PAGE_SIZE up and inside the allowed
        ranges (all of [PAGE_SIZE, ULONG_MAX - PAGE_SIZE] when none are set), that holds
        ``length`` at an alignment min(roundup_pow_of_two(length), lowest bit of uptr,
        max_alignment) with uptr's page offset kept.  EOVERFLOW for a zero or huge length,
        EINVAL when that alignment is below iova_alignment, ENOSPC when nothing fits."""
        if length == 0 or length >= ULONG_MAX // 2:
            raise KernelErr(errno.EOVERFLOW, "length out of range for IOVA allocation")
        page_offset = uptr % PAGE_SIZE
        align = 1 << (length - 1).bit_length()
        if uptr:
            align = min(align, uptr & -uptr)
        if align >= max_alignment:
            align = max_alignment
        if align < self.iova_alignment:
            raise KernelErr(errno.EINVAL, "user address alignment below the IOAS's iova_alignment")
        lo, hi = PAGE_SIZE, ULONG_MAX - PAGE_SIZE
        if self.allowed:
            spans = [(max(s, lo), min(l, hi)) for s, l in _merge(self.allowed) if l >= lo and s <= hi]
        else:
            spans = [(lo, hi)]
        used = None
        for a_first, a_last in spans:
            if _check_range(a_first, a_last, length, align, page_offset) is None:
                continue
            if used is None:
                used = [(s, v[0]) for s, v in self.areas.items()] + [(r[0], r[1]) for r in self.reserved + self.outside]
            for h_first, h_last in _holes(used, a_first, a_last):
                start = _check_range(h_first, h_last, length, align, page_offset)
                if start is not None:
                    return start
        raise KernelErr(errno.ENOSPC, "no free IOVA hole")

    # -- map --------------------------------------------------------------------
    def map_pages(self, host, elms, length: int, iova: int | None, prot: int,
                  max_alignment: int = MAX_ALLOC_ALIGNMENT) -> int:
        """iopt_map_pages: iopt_alloc_area_pages (length vs alignment / zero: EINVAL; the IOVA
        allocated from the first element's user address, or checked when fixed; each area:
        EPERM for a write mapping of read-only pages, EINVAL for a page offset below the IOAS's
        alignment), then iopt_fill_domains_pages (per area: pin, EFAULT; then each domain's
        driver may refuse the mapping, e.g. Intel's EINVAL without read/write), all or nothing.
        ``elms`` is the iopt_pages_list: [(pages, start_byte, length)]."""
        if (length & (self.iova_alignment - 1)) or not length:
            raise KernelErr(errno.EINVAL, "length zero or not aligned to iova_alignment")
        if iova is None:
            pages, start_byte, _ = elms[0]
            iova = self.alloc_iova(pages.uptr + start_byte, length, max_alignment)
        else:
            self.check_iova(iova, length)
        cur = iova
        for pages, start_byte, elm_len in elms:   # iopt_insert_area
            if prot & PROT_WRITE and not pages.writable:
                raise KernelErr(errno.EPERM, "writeable mapping of pages that are not writable")
            if (start_byte % PAGE_SIZE) & (self.iova_alignment - 1):
                raise KernelErr(errno.EINVAL, "user address page offset not aligned to iova_alignment")
            if cur + elm_len - 1 > ULONG_MAX:
                raise KernelErr(errno.EOVERFLOW, "iova + length overflows")
            cur += elm_len
        filled = []
        try:
            if self.domains:   # iopt_area_fill_domains: pin, map into each domain
                cur = iova
                for pages, start_byte, elm_len in elms:
                    first, last = start_byte // PAGE_SIZE, (start_byte + elm_len - 1) // PAGE_SIZE
                    pages.add_domain_range(host, first, last)
                    filled.append((pages, first, last))
                    for dom in self.domains:
                        host.driver_of_domain(dom).check_map(dom, cur, cur + elm_len - 1, prot)
                    cur += elm_len
        except KernelErr:
            for pages, first, last in filled:
                pages.remove_domain_range(first, last)
            raise
        cur = iova
        for pages, start_byte, elm_len in elms:
            last = cur + elm_len - 1
            self.areas[cur] = (last, prot)
            self.area_src[cur] = Area(pages, start_byte)
            for dom in self.domains:
                dom.map(cur, last, prot)
            cur = last + 1
        return iova

    def get_pages(self, iova: int, length: int):
        """iopt_get_pages: the iopt_pages_list of [iova, iova+length): EINVAL for length 0,
        EOVERFLOW, ENOENT unless contiguous areas cover it."""
        if not length:
            raise KernelErr(errno.EINVAL, "length 0")
        last = iova + length - 1
        if last > ULONG_MAX:
            raise KernelErr(errno.EOVERFLOW, "iova + length overflows")
        areas, done = self.contig_areas(iova, last)
        if not done:
            raise KernelErr(errno.ENOENT, "range not fully covered by contiguous mappings")
        return [(area.pages, self.start_byte(a_start, cur), min(last, a_last) - cur + 1)
                for a_start, a_last, _, area, cur in areas]

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
        """iopt_unmap_iova_range: an area an access still pins is first marked prevent_access
        and every access of the IOAS is told to unmap it (iommufd_access_notify_unmap); an
        access that does not let go makes the call fail with EDEADLOCK after 100 tries."""
        unmapped = 0
        tries = 0
        while (area := self.area_iter_first(start, last)) is not None:
            a_start, a_last, _ = area
            if a_start < start or a_last > last:
                raise KernelErr(errno.ENOENT, "range cuts through a mapping", partial=unmapped)
            if a_start != start:
                tries = 0
            src = self.area_src[a_start]
            if src.num_accesses:
                start = a_start
                src.prevent_access = True
                self.notify_unmap(a_start, a_last - a_start + 1)
                tries += 1
                if tries > UNMAP_MAX_TRIES:
                    raise KernelErr(errno.EDEADLK, "an access does not release its pages on unmap",
                                    partial=unmapped)
                continue
            self._remove_area(a_start, a_last)
            unmapped += a_last - a_start + 1
            if a_last >= last:
                break
            start = a_last + 1
        return unmapped

    def _remove_area(self, a_start: int, a_last: int) -> None:
        """iopt_area_unfill_domains + iopt_abort_area + iopt_put_pages."""
        del self.areas[a_start]
        src = self.area_src.pop(a_start)
        if self.domains:
            src.pages.remove_domain_range(*src.index_range(a_last - a_start + 1))
        for dom in self.domains:
            dom.unmap(a_start, a_last)

    def notify_unmap(self, iova: int, length: int) -> None:
        """iommufd_access_notify_unmap: every access on this IOAS gets its unmap callback."""
        for access in list(self.accesses):
            access.notify_unmap(iova, length)

    # -- VFIO type1 (v1) cuts ------------------------------------------------------
    def cut_iova(self, iovas) -> None:
        """iopt_cut_iova: split the area holding each IOVA so that the IOVA becomes the last
        byte of an area (iopt_area_split); stops at the first failure."""
        for iova in iovas:
            a = self.area_iter_first(iova, iova)
            if a is not None:
                self._area_split(a[0], a[1], a[2], iova)

    def _area_split(self, a_start: int, a_last: int, prot: int, iova: int) -> None:
        """iopt_area_split: nothing to do at the area's ends; EBUSY while an unmap is pending;
        EINVAL for a cut not aligned to iova_alignment, through an area an access pins, or
        through one a domain may hold with huge pages (large pages enabled)."""
        if iova in (a_start, a_last):
            return
        src = self.area_src[a_start]
        if src.prevent_access:
            raise KernelErr(errno.EBUSY, "area is being unmapped")
        new_start = iova + 1
        align = self.iova_alignment
        if new_start & (align - 1) or self.start_byte(a_start, new_start) & (align - 1):
            raise KernelErr(errno.EINVAL, "cut not aligned to iova_alignment")
        if src.num_accesses:
            raise KernelErr(errno.EINVAL, "cannot split an area an access pins")
        if self.domains and not self.disable_large_pages:
            raise KernelErr(errno.EINVAL, "cannot split an area a domain may map with huge pages")
        lhs = Area(src.pages, src.start_byte)
        rhs = Area(src.pages, self.start_byte(a_start, new_start))
        if self.domains:
            src.pages.remove_domain_range(*src.index_range(a_last - a_start + 1))
            src.pages.domain_ranges.append(lhs.index_range(new_start - a_start))
            src.pages.domain_ranges.append(rhs.index_range(a_last - new_start + 1))
        self.areas[a_start] = (iova, prot)
        self.areas[new_start] = (a_last, prot)
        self.area_src[a_start] = lhs
        self.area_src[new_start] = rhs
        for dom in self.domains:   # the IOPTEs are unchanged; the model keeps one entry per area
            dom.split(a_start, iova)

    # -- reserved and allowed ranges --------------------------------------------------
    def reserve(self, start: int, last: int, owner) -> None:
        """iopt_reserve_iova: EADDRINUSE if a mapping or an allowed range is already there."""
        if self.area_iter_first(start, last) or self.allowed and self.allowed_iter_first(start, last):
            raise KernelErr(errno.EADDRINUSE, f"reserved range {start:#x}-{last:#x} of {owner} "
                                              "intersects a mapping or an allowed range")
        self.reserved.append((start, last, owner))

    def remove_reserved(self, owner) -> None:
        self.reserved[:] = [r for r in self.reserved if r[2] != owner]

    def set_allow_iova(self, ranges) -> None:
        """iopt_set_allow_iova: the new allowed set replaces the old one unless a reserved range
        intersects one of them (EADDRINUSE, the old set stays)."""
        for s, l in ranges:
            if self.reserved_iter_first(s, l):
                raise KernelErr(errno.EADDRINUSE, f"allowed range {s:#x}-{l:#x} intersects a reserved range")
        self.allowed[:] = sorted(ranges)

    def iova_ranges(self):
        """The holes of reserved_itree over [0, ULONG_MAX] (iommufd_ioas_iova_ranges)."""
        return list(_holes([(r[0], r[1]) for r in self.reserved + self.outside], 0, ULONG_MAX))

    # -- alignment ------------------------------------------------------------------------
    def check_iova_alignment(self, new_align: int) -> None:
        """iopt_check_iova_alignment: every area's IOVA, length and page offset conform (EADDRINUSE)."""
        mask = new_align - 1
        for s, (l, _) in self.areas.items():
            if s & mask or (l - s + 1) & mask or (self.area_src[s].start_byte % PAGE_SIZE) & mask:
                raise KernelErr(errno.EADDRINUSE, "existing mapping not aligned to the new iova_alignment")

    def calculate_iova_alignment(self) -> None:
        """iopt_calculate_iova_alignment: PAGE_SIZE with large pages disabled, raised to every
        domain's smallest page and every access's alignment; an increase is checked."""
        new = PAGE_SIZE if self.disable_large_pages else 1
        for d in self.domains:
            new = max(new, d.min_page_size)
        for a in self.accesses:
            new = max(new, a.iova_alignment)
        if new > self.iova_alignment:
            self.check_iova_alignment(new)
        self.iova_alignment = new

    def enable_large_pages(self) -> None:
        """iopt_enable_large_pages."""
        self.disable_large_pages = False
        self.calculate_iova_alignment()

    def disable_large_pages_(self) -> None:
        """iopt_disable_large_pages: EINVAL once domains hold mappings; the alignment rises to
        PAGE_SIZE (EADDRINUSE if a mapping does not conform, the option stays off)."""
        if self.disable_large_pages:
            return
        if self.domains and len(self.areas):
            raise KernelErr(errno.EINVAL, "domains already hold mappings")
        self.disable_large_pages = True
        try:
            self.calculate_iova_alignment()
        except KernelErr:
            self.disable_large_pages = False
            raise

    # -- accesses ---------------------------------------------------------------------------
    def add_access(self, access) -> None:
        """iopt_add_access: the access's alignment joins the IOAS's (EADDRINUSE)."""
        self.accesses.append(access)
        try:
            self.calculate_iova_alignment()
        except KernelErr:
            self.accesses.remove(access)
            raise

    def remove_access(self, access) -> None:
        """iopt_remove_access."""
        self.accesses.remove(access)
        self.calculate_iova_alignment()

    # -- domains --------------------------------------------------------------------
    def add_domain(self, domain, host) -> None:
        """iopt_table_add_domain: raise iova_alignment to the domain's page size (EINVAL above
        PAGE_SIZE, EADDRINUSE for a mapping that does not conform), reserve everything outside
        the domain's aperture (EADDRINUSE if an area or allowed range is there), fill it: the
        first domain pins every area's pages (EFAULT), later ones copy from it; the driver may
        refuse an area (Intel: EINVAL for one without read/write)."""
        new_align = max(domain.min_page_size, self.iova_alignment)
        if new_align > PAGE_SIZE:
            raise KernelErr(errno.EINVAL, "domain page size above PAGE_SIZE")
        if new_align != self.iova_alignment:
            self.check_iova_alignment(new_align)
        outside = []
        aperture_start = domain.aperture_start
        if aperture_start != 0:
            outside.append((0, aperture_start - 1, domain.serial))
        if domain.aperture_end != ULONG_MAX:
            outside.append((domain.aperture_end + 1, ULONG_MAX, domain.serial))
        for s, l, _ in outside:
            if self.area_iter_first(s, l) or self.allowed and self.allowed_iter_first(s, l):
                raise KernelErr(errno.EADDRINUSE, f"a mapping or allowed range lies outside the domain's "
                                                  f"aperture ({s:#x}-{l:#x})")
        # iopt_fill_domain, area by area: the first domain pins (EFAULT), then the driver maps
        # (it may refuse: check_map); an error unwinds what was filled.
        areas = self.areas.items()
        driver = host.driver_of_domain(domain)
        filled = []
        try:
            for s, (l, prot) in areas:
                if not self.domains:
                    src = self.area_src[s]
                    rng = src.index_range(l - s + 1)
                    src.pages.add_domain_range(host, *rng)
                    filled.append((src.pages, rng))
                driver.check_map(domain, s, l, prot)
        except KernelErr:
            for pages, rng in filled:
                pages.remove_domain_range(*rng)
            raise
        self.outside.extend(outside)
        for s, (l, prot) in areas:
            domain.map(s, l, prot)
        self.domains.append(domain)
        self.iova_alignment = new_align

    def remove_domain(self, domain) -> None:
        """iopt_table_remove_domain: unfill (the last domain unpins), alignment recomputed."""
        self.domains[:] = [d for d in self.domains if d is not domain]
        serial = domain.serial
        self.outside[:] = [r for r in self.outside if r[2] != serial]
        for s, (l, _) in self.areas.items():
            domain.unmap(s, l)
            if not self.domains:
                src = self.area_src[s]
                src.pages.remove_domain_range(*src.index_range(l - s + 1))
        self.calculate_iova_alignment()

    def snapshot(self):
        return (tuple((s, l, p) for s, (l, p) in self.areas.items()), tuple(sorted(self.reserved, key=repr)),
                self.iova_alignment, tuple(self.allowed), self.disable_large_pages,
                tuple((s, a.start_byte, a.num_accesses, a.pages.snapshot()) for s, a in sorted(self.area_src.items())))
