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
from .drivers.mock import MockDev
from .err import KernelErr
from .main import OBJ_SELFTEST, IommufdCtx, Obj

# op -> (first release with it, handler(ctx, cmd)).  Handlers mutate ``cmd`` for the write-back
# (iommufd_ucmd_respond copies min(size, sizeof) back on success).
TEST_OPS: dict[int, tuple[str, object]] = {}


def register(op: int, since: str, handler) -> None:
    """Add a test op to the dispatcher (one entry per IOMMU_TEST_OP_* value)."""
    TEST_OPS[op] = (since, handler)


def _version(v: str | None) -> tuple[int, ...]:
    return tuple(int(x) for x in (v or "99.99").split(".")[:2])


def iommufd_test(ctx: IommufdCtx, cmd: uapi.iommu_test_cmd) -> None:
    """iommufd_test: switch (cmd->op), default -EOPNOTSUPP.  The kernel never looks at
    __reserved or ``last``."""
    entry = TEST_OPS.get(cmd.op)
    if entry is None or _version(entry[0]) > _version(ctx.host.profile.kernel):
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


register(uapi.IOMMU_TEST_OP_MOCK_DOMAIN, "6.2", test_mock_domain)
register(uapi.IOMMU_TEST_OP_MOCK_DOMAIN_FLAGS, "6.7", test_mock_domain)   # with dirty tracking
register(uapi.IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE, "6.5", test_mock_domain_replace)   # the replace series
