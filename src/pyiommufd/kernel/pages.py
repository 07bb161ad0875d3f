"""struct iopt_pages: the user memory behind IOAS areas, and its pins.

Mirrors drivers/iommu/iommufd/pages.c (6.12.117).  One IopPages is made per IOAS_MAP (or
VFIO_IOMMU_MAP_DMA) and shared by every area that points into it: the areas IOAS_COPY makes in
other IOASes and the halves iopt_area_split leaves.  A page of it is pinned (FOLL_PIN, one pin
per iopt_pages however many domains hold it) while an area over it sits in a domain -- the
pages' ``domains_itree`` -- or an in-kernel access pinned it -- ``access_itree``.
IOMMU_TEST_OP_MD_CHECK_REFS reads exactly that count (``page_pins``).

User memory is the source process's (pages->source_mm: the address space of the caller that
mapped it, ``mm_key``); the kernel pins from it when a domain or an access first needs a page
(EFAULT for a hole, or when that process is gone: mmget_not_zero fails) and reads and writes
it for iommufd_access_rw.  Pages are identified by (address space, page address): the model
has no physical pages, so memory shared between processes (fork of MAP_SHARED) is the same
page only as seen from each side.

The memory protocol (``host.mem`` and what ``source_mem`` returns): ``read(addr, n)``,
``write(addr, data)`` (KernelErr(EFAULT) on a hole), optionally ``probe(addr, n)`` (the same
check without moving data), ``mm_key`` (the address space's identity; default: the object)
and ``alive`` (default True).  ``pyiommufd emulate`` hands the model a new memory object per
call; it gives them the calling process's ``mm_key`` and sets ``host.remote_mem(key)``: the
memory of another process that is still alive, or None.
"""
from __future__ import annotations

import errno

from .err import KernelErr

PAGE_SIZE = 4096
SIZE_MAX = (1 << 64) - 1

# IOPT_PAGES_ACCOUNT_* (io_pagetable.h): how pinned pages are charged to RLIMIT_MEMLOCK
ACCOUNT_NONE, ACCOUNT_USER, ACCOUNT_MM = 0, 1, 2


# -- the source address space --------------------------------------------------------------
def mm_key(mem):
    """Identity of an address space for page refcounts: ``mem.mm_key`` if the memory object
    has one (``pyiommufd emulate``: one per client process), else the object itself."""
    return getattr(mem, "mm_key", mem)


def mm_alive(mem) -> bool:
    """mmget_not_zero: False once the process that owns ``mem`` has exited (``alive`` may be
    an attribute or a method)."""
    alive = getattr(mem, "alive", True)
    return bool(alive() if callable(alive) else alive)


def probe_user(mem, addr: int, length: int) -> None:
    """pin_user_pages on [addr, addr+length): KernelErr(EFAULT) if any byte is not mapped or the
    process is gone.  Uses ``mem.probe`` when the memory object has one (no data moves)."""
    if not mm_alive(mem):
        raise KernelErr(errno.EFAULT, "the process that mapped these pages has exited (mmget_not_zero)")
    probe = getattr(mem, "probe", None)
    try:
        if probe is not None:
            probe(addr, length)
        else:
            mem.read(addr, length)
    except KernelErr as e:
        raise KernelErr(errno.EFAULT, f"pin_user_pages: {e.detail}") from None


def source_mem(host, pages):
    """mmget_not_zero(pages->source_mm): the memory to pin from or copy with, or None when the
    process is gone.  The caller's own memory when it is the source (the usual case), else the
    other process's through ``host.remote_mem`` (emulate) or the object kept at map time
    (in-process: memory objects live as long as the test holds them)."""
    mem = host.mem
    if mm_key(mem) == pages.mm_key:
        return mem if mm_alive(mem) else None
    remote = getattr(host, "remote_mem", None)
    if remote is not None:
        return remote(pages.mm_key)
    if hasattr(pages.mm, "mm_key"):   # a per-call object of another process: unreachable now
        return None
    return pages.mm if mm_alive(pages.mm) else None


class IopPages:
    """struct iopt_pages: ``uptr`` (page aligned), ``npages``, ``writable``, ``account_mode``,
    the source address space (``mm_key``; ``mm`` the memory object seen at map time), and the
    two trees that decide what is pinned:
    ``domain_ranges`` (pages_node of every area held by a domain, a multiset) and
    ``accesses`` ((start_index, last_index) -> users, iopt_pages_access)."""

    __slots__ = ("uptr", "npages", "writable", "account_mode", "mm", "mm_key", "domain_ranges", "accesses")
    _fixed = ("uptr", "npages", "writable", "mm", "mm_key", "domain_ranges", "accesses")   # never rebound (snapshot.fixed_slots)

    def __init__(self, uptr: int, npages: int, writable: bool, mm, account_mode: int):
        self.uptr = uptr
        self.npages = npages
        self.writable = writable
        self.account_mode = account_mode
        self.mm = mm
        self.mm_key = mm_key(mm)
        self.domain_ranges: list[tuple[int, int]] = []
        self.accesses: dict[tuple[int, int], int] = {}

    def __deepcopy__(self, memo):
        from copy import deepcopy
        new = IopPages.__new__(IopPages)
        memo[id(self)] = new
        new.uptr, new.npages, new.writable, new.account_mode = self.uptr, self.npages, self.writable, self.account_mode
        new.mm = deepcopy(self.mm, memo)
        new.mm_key = mm_key(new.mm) if self.mm_key is self.mm else self.mm_key
        new.domain_ranges = list(self.domain_ranges)
        new.accesses = dict(self.accesses)
        return new

    # -- pinned state ------------------------------------------------------------------
    def pinned_ranges(self):
        return self.domain_ranges + list(self.accesses)

    def is_pinned(self, index: int) -> bool:
        return any(s <= index <= l for s, l in self.pinned_ranges())

    def _covered(self, start: int, last: int) -> bool:
        """Is every index of [start, last] pinned already (so no pfn comes from the mm)?"""
        ranges = sorted(self.pinned_ranges())
        cur = start
        for s, l in ranges:
            if s > cur:
                break
            cur = max(cur, l + 1)
            if cur > last:
                return True
        return cur > last

    def pin(self, host, start: int, last: int) -> None:
        """pfn_reader_user_pin for the indexes [start, last] not already pinned by this
        iopt_pages (those are read from the xarray or the storage domain instead)."""
        if self._covered(start, last):
            return
        mem = source_mem(host, self)
        if mem is None:
            raise KernelErr(errno.EFAULT, "the process that mapped these pages has exited (mmget_not_zero)")
        host.fallible("pfn_reader_user_pin", errno.EFAULT)   # its iommufd_should_fail()
        probe_user(mem, self.uptr + start * PAGE_SIZE, (last - start + 1) * PAGE_SIZE)

    # -- domains_itree -------------------------------------------------------------------
    def add_domain_range(self, host, start: int, last: int) -> None:
        """iopt_area_fill_domains / iopt_fill_domain for an area without a storage domain:
        pin what is not pinned yet (EFAULT), then insert into domains_itree."""
        self.pin(host, start, last)
        self.domain_ranges.append((start, last))

    def remove_domain_range(self, start: int, last: int) -> None:
        self.domain_ranges.remove((start, last))

    # -- access_itree (iopt_area_add_access / iopt_area_remove_access) ---------------------
    def add_access(self, host, start: int, last: int, write: bool) -> None:
        """iopt_area_add_access: EPERM writing read-only pages; an exact range already present
        gains a user, a new one is pinned (iopt_pages_fill_xarray: EFAULT from the mm)."""
        if write and not self.writable:
            raise KernelErr(errno.EPERM, "write access to pages mapped read-only")
        key = (start, last)
        if key in self.accesses:
            self.accesses[key] += 1
            return
        self.pin(host, start, last)
        self.accesses[key] = 1

    def remove_access(self, start: int, last: int) -> None:
        key = (start, last)
        users = self.accesses.get(key)
        if not users:
            raise AssertionError(f"iopt_area_remove_access: no access {key} (WARN_ON)")
        if users == 1:
            del self.accesses[key]
        else:
            self.accesses[key] = users - 1

    # -- CPU access (iopt_pages_rw_access) -------------------------------------------------
    def rw(self, host, start_byte: int, data: bytearray | None, length: int, write: bool) -> bytes:
        """iopt_pages_rw_access: copy ``length`` bytes at ``start_byte`` of these pages to or from
        the source process's memory.  EPERM writing read-only pages.  When the source process is
        gone, only pinned pages can be reached (iopt_pages_rw_slow reads them from the xarray or
        a domain); the model has no physical page to read, so it reaches them through the
        caller's memory at the same address -- right for the selftest's MAP_SHARED buffer
        inherited across fork, documented as an approximation otherwise."""
        if write and not self.writable:
            raise KernelErr(errno.EPERM, "write through an access to read-only pages")
        addr = self.uptr + start_byte
        mem = source_mem(host, self)
        if mem is None:
            first, last = start_byte // PAGE_SIZE, (start_byte + length - 1) // PAGE_SIZE
            if not self._covered(first, last):
                raise KernelErr(errno.EFAULT, "source process gone and the pages are not pinned")
            mem = host.mem
        if write:
            mem.write(addr, bytes(data))
            return b""
        return mem.read(addr, length)

    def snapshot(self):
        return (self.uptr, self.npages, self.writable, self.account_mode,
                tuple(sorted(self.domain_ranges)), tuple(sorted(self.accesses.items())))


def alloc_pages(host, uptr: int, length: int, writable: bool, ctx_account_mode: int) -> tuple[IopPages, int]:
    """iopt_alloc_pages + the account-mode upgrade of iopt_map_user_pages: EINVAL for a zero or
    huge length, EOVERFLOW when uptr + length wraps.  Returns the pages and the area's
    start_byte (uptr's offset in its page).  The caller is privileged (CAP_IPC_LOCK: no
    RLIMIT_MEMLOCK accounting) unless the ctx asked for MM mode."""
    if length > SIZE_MAX - PAGE_SIZE or length == 0:
        raise KernelErr(errno.EINVAL, "length zero or too large")
    if uptr + length > SIZE_MAX:
        raise KernelErr(errno.EOVERFLOW, "user_va + length overflows")
    base = uptr & ~(PAGE_SIZE - 1)
    npages = -(-(length + uptr - base) // PAGE_SIZE)
    host.fallible("iopt_pages alloc")
    mode = ACCOUNT_NONE if host.cap_ipc_lock else ACCOUNT_USER
    if ctx_account_mode == ACCOUNT_MM and mode == ACCOUNT_USER:
        mode = ACCOUNT_MM
    return IopPages(base, npages, writable, host.mem, mode), uptr - base


def page_pins(host, mem, page_addr: int) -> int:
    """The FOLL_PIN count of the page at ``page_addr`` of address space ``mem``, as
    page_ref_count / GUP_PIN_COUNTING_BIAS shows it: one per live iopt_pages that pins it,
    over every iommufd of the machine (pages are global)."""
    key = mm_key(mem)
    seen = set()   # one pin per iopt_pages, however many areas share it
    count = 0
    for ctx in host.ctxs.values():
        for obj in list(ctx.objects.values()) + list(ctx.building.values()):
            iopt = getattr(obj, "iopt", None)
            if iopt is None:
                continue
            for pages in iopt.all_pages():
                if id(pages) in seen:
                    continue
                seen.add(id(pages))
                if pages.mm_key != key or not pages.uptr <= page_addr < pages.uptr + pages.npages * PAGE_SIZE:
                    continue
                if pages.is_pinned((page_addr - pages.uptr) // PAGE_SIZE):
                    count += 1
    return count
