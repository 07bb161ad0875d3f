"""The IOAS and pages half of IOMMU_TEST_CMD (drivers/iommu/iommufd/selftest.c, 6.12.117):
ADD_RESERVED, MD_CHECK_REFS, SET_TEMP_MEMORY_LIMIT and the test access fds (CREATE_ACCESS,
ACCESS_PAGES, DESTROY_ACCESS_PAGES, ACCESS_RW, ACCESS_REPLACE_IOAS).

A test access is a file (anon inode "[iommufd_test_staccess]", struct selftest_access) handed
to the caller as an fd; closing it destroys the iommufd_access behind it.  Its items are the
page ranges ACCESS_PAGES pinned; the access's unmap op drops every item an unmap touches,
as iommufd_test_access_unmap does.  The ops register themselves with selftest.register.
"""
from __future__ import annotations

import errno

from .. import uapi
from ..errors import EmulationGap
from . import access as iaccess
from .err import KernelErr
from .main import OBJ_IOAS, IommufdCtx
from .pages import PAGE_SIZE, mm_key, page_pins, probe_user
from .selftest import register

ULONG_MAX = (1 << 64) - 1
MAX_TEST_LENGTH = 16 * 1024 * 1024   # "Prevent syzkaller from triggering a WARN_ON in kvzalloc()"


class SelftestAccess:
    """struct selftest_access + its file: ``access`` (the iommufd_access, None until created),
    ``items`` [(id, iova, length)] in list_add_tail order, ``next_id``.  It is also the
    access's ops (selftest_access_ops_pin when ``needs_pin_pages``, else selftest_access_ops)."""

    __slots__ = ("access", "items", "next_id", "needs_pin_pages", "refs")
    kind = "selftest-access"

    def __init__(self, needs_pin_pages: bool):
        self.access = None
        self.items: list[tuple[int, int, int]] = []
        self.next_id = 0
        self.needs_pin_pages = needs_pin_pages

    # -- iommufd_access_ops ---------------------------------------------------------
    def unmap(self, access, iova: int, length: int) -> None:
        """iommufd_test_access_unmap: unpin and drop every item intersecting [iova, iova+length)."""
        last = min(iova + length - 1, ULONG_MAX)
        keep = []
        for item in self.items:
            _, i_iova, i_len = item
            if iova > i_iova + i_len - 1 or last < i_iova:
                keep.append(item)
                continue
            iaccess.unpin_pages(access, i_iova, i_len)
        self.items = keep

    # -- file_operations ----------------------------------------------------------------
    def release(self, host) -> None:
        """iommufd_test_staccess_release: unmap everything, then iommufd_access_destroy."""
        if self.access is not None:
            self.unmap(self.access, 0, ULONG_MAX)
            iaccess.access_destroy(self.access)
            self.access = None

    def snapshot(self):
        return ("selftest-access", self.access.id if self.access else None, tuple(self.items), self.next_id)


def _staccess(ctx: IommufdCtx, fd: int) -> SelftestAccess:
    """iommufd_access_get: fget (EBADFD for no such fd) and the file must be a test access (EBADFD)."""
    host = ctx.host
    try:
        f = host.files[host.fdget(fd)]
    except KernelErr:
        raise KernelErr(errno.EBADFD, f"fd {fd} is not open") from None
    if not isinstance(f, SelftestAccess):
        raise KernelErr(errno.EBADFD, f"fd {fd} is not a selftest access")
    return f


# -- IOMMU_TEST_OP_ADD_RESERVED --------------------------------------------------------------
def test_add_reserved(ctx: IommufdCtx, cmd) -> None:
    """iommufd_test_add_reserved: length 0 -> EINVAL, overflow -> EOVERFLOW, the IOAS (ENOENT),
    iopt_reserve_iova with no owner (EADDRINUSE over a mapping or an allowed range)."""
    start, length = cmd.add_reserved.start, cmd.add_reserved.length
    if not length:
        raise KernelErr(errno.EINVAL, "length 0")
    if start + length - 1 > ULONG_MAX:
        raise KernelErr(errno.EOVERFLOW, "start + length overflows")
    ioas = ctx.get(cmd.id, OBJ_IOAS)
    ioas.iopt.reserve(start, start + length - 1, None)


# -- IOMMU_TEST_OP_MD_CHECK_REFS ---------------------------------------------------------------
def test_md_check_refs(ctx: IommufdCtx, cmd) -> None:
    """iommufd_test_md_check_refs: length and uptr page aligned, no overflow (EINVAL); for each
    page get_user_pages_fast (EFAULT unmapped) and compare its pin count with ``refs`` (EIO).
    (Compound pages are skipped by the kernel; the model counts 4 KiB pages the same way for
    every page, which gives the answer the kernel's non-compound pages give.)"""
    length, uptr, refs = cmd.check_refs.length, cmd.check_refs.uptr, cmd.check_refs.refs
    if length % PAGE_SIZE or uptr % PAGE_SIZE or uptr + length > ULONG_MAX:
        raise KernelErr(errno.EINVAL, "length or uptr not page aligned, or overflow")
    host = ctx.host
    if length:
        probe_user(host.mem, uptr, length)
    for addr in range(uptr, uptr + length, PAGE_SIZE):
        pins = page_pins(host, host.mem, addr)
        if pins != refs:
            raise KernelErr(errno.EIO, f"page {addr:#x} has {pins} pin(s), expected {refs}")


# -- IOMMU_TEST_OP_SET_TEMP_MEMORY_LIMIT ----------------------------------------------------------
def test_set_temp_memory_limit(ctx: IommufdCtx, cmd) -> None:
    """iommufd_test_memory_limit (a module-wide value): below sizeof(unsigned long) +
    sizeof(u32) -> EINVAL.  It only sizes the kernel's temporary pfn batches, which change no
    result the model computes, so it is recorded and not used further."""
    if cmd.memory_limit.limit < 8 + 4:
        raise KernelErr(errno.EINVAL, "limit below the batch element size")
    ctx.host.test_memory_limit = cmd.memory_limit.limit


# -- test access fds ---------------------------------------------------------------------------
def test_create_access(ctx: IommufdCtx, cmd) -> None:
    """iommufd_test_create_access: unknown flags -> EOPNOTSUPP; the access is created and
    attached to ``cmd.id`` (ENOENT, EADDRINUSE when the IOAS's mappings do not meet a pinning
    access's PAGE_SIZE alignment); on success the fd is installed and reported."""
    flags = cmd.create_access.flags
    if flags & ~uapi.MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES:
        raise KernelErr(errno.EOPNOTSUPP, f"unknown create_access flags {flags:#x}")
    staccess = SelftestAccess(bool(flags & uapi.MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES))
    access = iaccess.access_create(ctx, staccess)
    try:
        iaccess.access_attach(access, cmd.id)
    except KernelErr:
        iaccess.access_destroy(access)
        raise
    staccess.access = access
    cmd.create_access.out_access_fd = ctx.host.install_file(staccess)


def test_access_replace_ioas(ctx: IommufdCtx, cmd) -> None:
    """iommufd_test_access_replace_ioas -> iommufd_access_replace (EBADFD, ENOENT, EADDRINUSE)."""
    staccess = _staccess(ctx, cmd.id)
    iaccess.access_replace(staccess.access, cmd.access_replace_ioas.ioas_id)


def _check_pages(host, uptr: int, pinned) -> None:
    """iommufd_test_check_pages: each pinned page must be the page under the user VA
    (get_user_pages_fast: EFAULT; another page: EBADE)."""
    for n, (mm, page) in enumerate(pinned):
        addr = uptr + n * PAGE_SIZE
        probe_user(host.mem, addr, 1)
        if mm_key(mm) != mm_key(host.mem) or page != addr:
            raise KernelErr(errno.EBADE, f"pinned page {n} is not the page at {addr:#x}")


def test_access_pages(ctx: IommufdCtx, cmd) -> None:
    """iommufd_test_access_pages: length > 16 MiB -> ENOMEM; flags other than WRITE (and SYZ,
    not modelled) -> EOPNOTSUPP; the access fd (EBADFD); an access made without
    NEEDS_PIN_PAGES -> EOPNOTSUPP; iommufd_access_pin_pages; with a uptr the pages must be
    the user's (EBADE); the item gets the next id, reported in out_access_pages_id."""
    ap = cmd.access_pages
    if ap.length > MAX_TEST_LENGTH:
        raise KernelErr(errno.ENOMEM, "length above 16 MiB")
    if ap.flags & ~(uapi.MOCK_FLAGS_ACCESS_WRITE | uapi.MOCK_FLAGS_ACCESS_SYZ):
        raise KernelErr(errno.EOPNOTSUPP, f"unknown access_pages flags {ap.flags:#x}")
    staccess = _staccess(ctx, cmd.id)
    if not staccess.needs_pin_pages:
        raise KernelErr(errno.EOPNOTSUPP, "access made without MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES")
    if ap.flags & uapi.MOCK_FLAGS_ACCESS_SYZ:
        raise EmulationGap("MOCK_FLAGS_ACCESS_SYZ (syzkaller IOVA conversion) is not modelled")
    iova, length = ap.iova, ap.length
    pinned = iaccess.pin_pages(staccess.access, iova, length, ap.flags & uapi.MOCK_FLAGS_ACCESS_WRITE)
    if ap.uptr:
        try:
            _check_pages(ctx.host, ap.uptr - (iova - (iova & ~(PAGE_SIZE - 1))), pinned)
        except KernelErr:
            iaccess.unpin_pages(staccess.access, iova, length)
            raise
    try:
        ctx.host.fallible("selftest_access_item alloc")
    except KernelErr:
        iaccess.unpin_pages(staccess.access, iova, length)
        raise
    item_id = staccess.next_id
    staccess.next_id += 1
    staccess.items.append((item_id, iova, length))
    ap.out_access_pages_id = item_id


def test_destroy_access_pages(ctx: IommufdCtx, cmd) -> None:
    """iommufd_test_access_item_destroy: the access fd (EBADFD); the item with that id is
    unpinned and dropped, ENOENT if there is none (e.g. an unmap dropped it already)."""
    staccess = _staccess(ctx, cmd.id)
    item_id = cmd.destroy_access_pages.access_pages_id
    for n, (i, iova, length) in enumerate(staccess.items):
        if i == item_id:
            del staccess.items[n]
            iaccess.unpin_pages(staccess.access, iova, length)
            return
    raise KernelErr(errno.ENOENT, f"no access item {item_id}")


def test_access_rw(ctx: IommufdCtx, cmd) -> None:
    """iommufd_test_access_rw: length > 16 MiB -> ENOMEM; flags other than WRITE / SLOW_PATH
    (SYZ not modelled) -> EOPNOTSUPP; the access fd (EBADFD); a write first copies the user
    buffer in (EFAULT); iommufd_access_rw; a read copies out to the user buffer (EFAULT).
    SLOW_PATH makes the kernel read through its pinned pfns instead of the mm; the bytes
    are the same ones."""
    rw = cmd.access_rw
    if rw.length > MAX_TEST_LENGTH:
        raise KernelErr(errno.ENOMEM, "length above 16 MiB")
    if rw.flags & ~(uapi.MOCK_ACCESS_RW_WRITE | uapi.MOCK_ACCESS_RW_SLOW_PATH | uapi.MOCK_FLAGS_ACCESS_SYZ):
        raise KernelErr(errno.EOPNOTSUPP, f"unknown access_rw flags {rw.flags:#x}")
    staccess = _staccess(ctx, cmd.id)
    mem = ctx.host.mem
    write = bool(rw.flags & uapi.MOCK_ACCESS_RW_WRITE)
    data = mem.read(rw.uptr, rw.length) if write and rw.length else None
    if rw.flags & uapi.MOCK_FLAGS_ACCESS_SYZ:
        raise EmulationGap("MOCK_FLAGS_ACCESS_SYZ (syzkaller IOVA conversion) is not modelled")
    out = iaccess.access_rw(staccess.access, rw.iova, data, rw.length, rw.flags & iaccess.ACCESS_RW_WRITE)
    if not write:
        mem.write(rw.uptr, out)


register(uapi.IOMMU_TEST_OP_ADD_RESERVED, "6.2", test_add_reserved)
register(uapi.IOMMU_TEST_OP_MD_CHECK_REFS, "6.2", test_md_check_refs)
register(uapi.IOMMU_TEST_OP_CREATE_ACCESS, "6.2", test_create_access)
register(uapi.IOMMU_TEST_OP_DESTROY_ACCESS_PAGES, "6.2", test_destroy_access_pages)
register(uapi.IOMMU_TEST_OP_ACCESS_PAGES, "6.2", test_access_pages)
register(uapi.IOMMU_TEST_OP_ACCESS_RW, "6.2", test_access_rw)
register(uapi.IOMMU_TEST_OP_SET_TEMP_MEMORY_LIMIT, "6.2", test_set_temp_memory_limit)
register(uapi.IOMMU_TEST_OP_ACCESS_REPLACE_IOAS, "6.6", test_access_replace_ioas)
