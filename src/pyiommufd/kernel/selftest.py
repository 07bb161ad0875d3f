"""IOMMU_TEST_CMD: the iommufd selftest's test ops (drivers/iommu/iommufd/selftest.c, 6.12.117).

``iommufd_test`` is the ioctl handler (IOCTL_OP(IOMMU_TEST_CMD, iommufd_test, struct
iommu_test_cmd, last) in main.c: min_size 68, E2BIG/EINVAL as every iommufd ioctl).  It
dispatches on ``cmd.op`` through ``TEST_OPS`` (op -> (first release, handler)); an op the
table lacks, or one newer than the profile's kernel, answers EOPNOTSUPP as the switch's
default does.  Other modules add their ops with ``register``.

The mock IOMMU driver itself is drivers/mock.py; this module holds the test ops and the
IOMMUFD_OBJ_SELFTEST object (struct selftest_obj) that owns a mock device.

One layout: struct iommu_test_cmd as of 6.12.117 (its union grew with DIRTY in 6.7); older
profiles gate the ops by release but decode the 6.12 layout.
"""
from __future__ import annotations

import errno

from .. import uapi
from .device import device_attach, device_bind, device_detach, device_replace, device_unbind
from . import fault
from .drivers.mock import MOCK_IO_PAGE_SIZE, MockDev, MockDomain, MockPtes
from .err import KernelErr
from .main import OBJ_DEVICE, OBJ_HWPT_NESTED, OBJ_HWPT_PAGING, OBJ_SELFTEST, IommufdCtx, Obj
from .pages import PAGE_SIZE, mm_key, probe_user

ULONG_MAX = (1 << 64) - 1

# op -> (first release with it, handler(ctx, cmd)).  Handlers mutate ``cmd`` for the write-back
# (iommufd_ucmd_respond copies min(size, sizeof) back on success).
TEST_OPS: dict[int, tuple[str, object]] = {}


def register(op: int, since: str, handler) -> None:
    """Add a test op to the dispatcher (one entry per IOMMU_TEST_OP_* value)."""
    TEST_OPS[op] = (since, handler)


def iommufd_test(ctx: IommufdCtx, cmd: uapi.iommu_test_cmd) -> None:
    """iommufd_test: switch (cmd->op), default -EOPNOTSUPP.  The kernel never looks at
    __reserved or ``last``."""
    entry = TEST_OPS.get(cmd.op)
    if entry is None or not ctx.host.profile.has(entry[0]):
        raise KernelErr(errno.EOPNOTSUPP, f"IOMMU_TEST_CMD: unknown op {cmd.op}")
    entry[1](ctx, cmd)


# -- the selftest object ------------------------------------------------------------------
class SelftestObj(Obj):
    """struct selftest_obj of TYPE_IDEV: a mock device, its iommufd_device (bound to this ctx,
    attached), destroyed with IOMMU_DESTROY of its id (iommufd_selftest_destroy)."""

    __slots__ = ("idev", "mock_dev")

    def __init__(self):
        super().__init__(OBJ_SELFTEST)
        self.idev = None
        self.mock_dev = None

    def destroy(self, ctx: IommufdCtx) -> None:
        """iommufd_selftest_destroy: detach, unbind, mock_dev_destroy."""
        device_detach(ctx, self.idev)
        device_unbind(ctx, self.idev)
        mock_dev_destroy(ctx.host, self.mock_dev)

    def snapshot(self):
        return ("idev", self.idev.id, self.mock_dev.name)


def mock_dev_create(host, dev_flags: int) -> MockDev:
    """mock_dev_create: unknown flags EINVAL; the lowest free mock_dev_ida id."""
    if dev_flags & ~(uapi.MOCK_FLAGS_DEVICE_NO_DIRTY | uapi.MOCK_FLAGS_DEVICE_HUGE_IOVA):
        raise KernelErr(errno.EINVAL, f"unknown mock device flags {dev_flags:#x}")
    host.fallible("mock_dev alloc")
    used = {m.id for m in host.mock_devs.values()}
    mid = next(i for i in range(len(used) + 1) if i not in used)
    mdev = MockDev(mid, dev_flags)
    host.mock_devs[mdev.name] = mdev
    return mdev


def mock_dev_destroy(host, mdev: MockDev) -> None:
    """mock_dev_destroy -> mock_dev_release: the ida id is free again."""
    del host.mock_devs[mdev.name]


# -- IOMMU_TEST_OP_MOCK_DOMAIN / MOCK_DOMAIN_FLAGS ------------------------------------------------
def test_mock_domain(ctx: IommufdCtx, cmd) -> None:
    """iommufd_test_mock_domain: allocate the selftest object, create a mock device, bind it
    (iommufd_device_bind), attach it to ``cmd.id`` (an IOAS: the auto-domain search; a HWPT:
    that HWPT), report out_stdev_id / out_hwpt_id / out_idev_id.  Every failure unwinds."""
    host = ctx.host
    sobj = ctx.alloc(SelftestObj())
    try:
        dev_flags = cmd.mock_domain_flags.dev_flags if cmd.op == uapi.IOMMU_TEST_OP_MOCK_DOMAIN_FLAGS else 0
        mdev = mock_dev_create(host, dev_flags)
        try:
            idev = device_bind(ctx, mdev)
            try:
                pt_id = device_attach(ctx, idev, cmd.id)
            except KernelErr:
                device_unbind(ctx, idev)
                raise
        except KernelErr:
            mock_dev_destroy(host, mdev)
            raise
    except KernelErr:
        ctx.abort(sobj)
        raise
    sobj.idev, sobj.mock_dev = idev, mdev
    cmd.mock_domain.out_hwpt_id = pt_id
    cmd.mock_domain.out_stdev_id = sobj.id
    cmd.mock_domain.out_idev_id = idev.id
    ctx.finalize(sobj)


def test_mock_domain_replace(ctx: IommufdCtx, cmd) -> None:
    """iommufd_test_mock_domain_replace: ``cmd.id`` must be a selftest object (ENOENT);
    iommufd_device_replace to mock_domain_replace.pt_id, which is written back."""
    sobj = ctx.get(cmd.id, OBJ_SELFTEST)
    cmd.mock_domain_replace.pt_id = device_replace(ctx, sobj.idev, cmd.mock_domain_replace.pt_id)


# -- ops on mock domains ------------------------------------------------------------------------
def get_md_pagetable(ctx: IommufdCtx, mockpt_id: int):
    """get_md_pagetable: a paging HWPT (ENOENT) whose domain is a mock paging domain (EINVAL)."""
    hwpt = ctx.get(mockpt_id, OBJ_HWPT_PAGING)
    if not isinstance(hwpt.domain, MockDomain) or hwpt.domain.kind != "paging":
        raise KernelErr(errno.EINVAL, f"HWPT {mockpt_id} is not a mock domain")
    return hwpt


def test_md_check_map(ctx: IommufdCtx, cmd) -> None:
    """iommufd_test_md_check_pa: iova, length and uptr multiples of MOCK_IO_PAGE_SIZE (and no
    overflow) else EINVAL; the mock HWPT; for each MOCK_IO_PAGE_SIZE the domain must map the
    IOVA (EINVAL) to the page under the user VA (get_user_pages_fast: EFAULT for a hole)."""
    iova, length, uptr = cmd.check_map.iova, cmd.check_map.length, cmd.check_map.uptr
    if iova % MOCK_IO_PAGE_SIZE or length % MOCK_IO_PAGE_SIZE or uptr % MOCK_IO_PAGE_SIZE \
            or uptr + length > ULONG_MAX:
        raise KernelErr(errno.EINVAL, "check_map: not MOCK_IO_PAGE_SIZE aligned or overflowing")
    hwpt = get_md_pagetable(ctx, cmd.id)
    host = ctx.host
    iopt = hwpt.ioas.iopt
    me = mm_key(host.mem)
    ptes = MockPtes(hwpt.domain, iopt, host.mem)
    while length:
        probe_user(host.mem, uptr & ~(PAGE_SIZE - 1), 1)
        target = iopt.iova_to_user(iova) if ptes.area(iova) is not None else None
        if target is None or mm_key(target[0]) != me or target[1] != uptr:
            raise KernelErr(errno.EINVAL, f"IOVA {iova:#x} does not map the page under {uptr:#x}")
        iova += MOCK_IO_PAGE_SIZE
        uptr += MOCK_IO_PAGE_SIZE
        length -= MOCK_IO_PAGE_SIZE


def test_md_check_iotlb(ctx: IommufdCtx, cmd) -> None:
    """iommufd_test_md_check_iotlb: a nested HWPT (ENOENT) of the mock (EINVAL); iotlb_id past
    MOCK_NESTED_DOMAIN_IOTLB_ID_MAX or a different value -> EINVAL."""
    hwpt = ctx.get(cmd.id, OBJ_HWPT_NESTED)
    if not isinstance(hwpt.domain, MockDomain):
        raise KernelErr(errno.EINVAL, f"HWPT {cmd.id} is not a mock nested domain")
    i = cmd.check_iotlb.id
    if i > uapi.MOCK_NESTED_DOMAIN_IOTLB_ID_MAX or hwpt.domain.iotlb[i] != cmd.check_iotlb.iotlb:
        raise KernelErr(errno.EINVAL, f"iotlb[{i}] is not {cmd.check_iotlb.iotlb:#x}")


def test_dirty(ctx: IommufdCtx, cmd) -> None:
    """iommufd_test_dirty: page_size/length 0, iova or length not a multiple of page_size, no
    uptr -> EINVAL; more than 16M * 8 pages EOVERFLOW; the mock HWPT; tracking off EINVAL; the
    bitmap copied in (EFAULT); each set bit marks the IOPTE at index (iova + i*page_size) /
    page_size dirty if one is there, counted in out_nr_dirty."""
    d = cmd.dirty
    page_size, iova, length = d.page_size, d.iova, d.length
    if not page_size or not length or iova % page_size or length % page_size or not d.uptr:
        raise KernelErr(errno.EINVAL, "dirty: bad page_size, iova, length or uptr")
    nbits = length // page_size
    if nbits > (16 << 20) * 8:
        raise KernelErr(errno.EOVERFLOW, "dirty: bitmap above 16 MiB")
    hwpt = get_md_pagetable(ctx, cmd.id)
    dom = hwpt.domain
    if not dom.tracking:
        raise KernelErr(errno.EINVAL, "dirty tracking is off")
    bitmap = ctx.host.mem.read(d.uptr, (nbits + 7) // 8)
    ptes = MockPtes(dom, hwpt.ioas.iopt, ctx.host.mem)
    count = 0
    for i in range(nbits):
        if not bitmap[i // 8] >> (i % 8) & 1:
            continue
        index = (iova + i * page_size) // page_size   # the kernel's xarray index, as written
        if ptes.area(index * MOCK_IO_PAGE_SIZE) is not None:
            dom.dirty.add(index)
            count += 1
    d.out_nr_dirty = count


def test_trigger_iopf(ctx: IommufdCtx, cmd) -> None:
    """iommufd_test_trigger_iopf: a DEVICE (ENOENT) that is a mock device (EINVAL); report a
    LAST_PAGE page request (PASID_VALID unless pasid is IOMMU_NO_PASID) for it."""
    t = cmd.trigger_iopf
    idev = ctx.get(t.dev_id, OBJ_DEVICE)
    if not isinstance(idev.dev, MockDev):
        raise KernelErr(errno.EINVAL, f"device {t.dev_id} is not a mock device")
    flags = fault.IOMMU_FAULT_PAGE_REQUEST_LAST_PAGE
    if t.pasid != fault.IOMMU_NO_PASID:
        flags |= fault.IOMMU_FAULT_PAGE_REQUEST_PASID_VALID
    fault.report_device_fault(idev, flags, t.pasid, t.grpid, t.perm, t.addr)


register(uapi.IOMMU_TEST_OP_MOCK_DOMAIN, "6.2", test_mock_domain)
register(uapi.IOMMU_TEST_OP_MOCK_DOMAIN_FLAGS, "6.7", test_mock_domain)   # with dirty tracking
register(uapi.IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE, "6.5", test_mock_domain_replace)   # the replace series
register(uapi.IOMMU_TEST_OP_MD_CHECK_MAP, "6.2", test_md_check_map)
register(uapi.IOMMU_TEST_OP_DIRTY, "6.7", test_dirty)
register(uapi.IOMMU_TEST_OP_MD_CHECK_IOTLB, "6.7", test_md_check_iotlb)   # with nested HWPTs
register(uapi.IOMMU_TEST_OP_TRIGGER_IOPF, "6.11", test_trigger_iopf)      # with fault queues
