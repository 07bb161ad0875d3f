"""IOMMU_FAULT_QUEUE_ALLOC and the fault fd: drivers/iommu/iommufd/fault.c (6.12.117, v6.11+),
with the IOMMU core's delivery (drivers/iommu/io-pgfault.c iommu_report_device_fault).

A FAULT object owns an fd (anon inode "[iommufd-pgfault]").  A HWPT allocated with
FAULT_ID_VALID routes the I/O page faults of the devices attached to it to that object:
``deliver`` (groups not yet read), ``response`` (groups read, waiting for a response, by
cookie).  read(2) hands out struct iommu_hwpt_pgfault records, write(2) takes struct
iommu_hwpt_page_response.  Detaching or replacing away from the HWPT answers the pending
groups of that attachment with IOMMU_PAGE_RESP_INVALID (iommufd_auto_response_faults).
"""
from __future__ import annotations

import ctypes
import errno

from .. import uapi
from .err import KernelErr
from .main import OBJ_FAULT, IommufdCtx, Obj

IOMMU_FAULT_PAGE_REQUEST_PASID_VALID = 1 << 0
IOMMU_FAULT_PAGE_REQUEST_LAST_PAGE = 1 << 1
IOMMU_NO_PASID = 0
IOMMUFD_PAGE_RESP_SUCCESS, IOMMUFD_PAGE_RESP_INVALID = 0, 1
PGFAULT_SIZE = ctypes.sizeof(uapi.iommu_hwpt_pgfault)
RESPONSE_SIZE = ctypes.sizeof(uapi.iommu_hwpt_page_response)


class IopfGroup:
    """struct iopf_group: the faults of one page request group, the attach handle's device
    (``idev``, whose id the records carry) and HWPT, and the cookie once read."""

    __slots__ = ("faults", "idev", "hwpt", "cookie")

    def __init__(self, faults, idev, hwpt):
        self.faults = faults      # [(flags, pasid, grpid, perm, addr)]
        self.idev = idev
        self.hwpt = hwpt
        self.cookie = 0

    def snapshot(self):
        return (tuple(self.faults), self.idev.id, self.hwpt.id, self.cookie)


class Fault(Obj):
    """struct iommufd_fault.  ``users``: the xarray, the fd, each HWPT allocated on it."""

    __slots__ = ("deliver", "response")
    _fixed = __slots__   # never rebound, changed in place (snapshot.fixed_slots)

    def __init__(self):
        super().__init__(OBJ_FAULT)
        self.deliver: list[IopfGroup] = []
        self.response: dict[int, IopfGroup] = {}

    def destroy(self, ctx: IommufdCtx) -> None:
        """iommufd_fault_destroy: every pending group gets IOMMU_PAGE_RESP_INVALID."""
        self.deliver.clear()
        self.response.clear()

    def snapshot(self):
        return (tuple(g.snapshot() for g in self.deliver),
                tuple(sorted((c, g.snapshot()) for c, g in self.response.items())))


class FaultFile:
    """The fault fd (iommufd_fault_fops).  Holds a user of the FAULT object and a reference
    on the ctx (iommufd_ctx_get in iommufd_fault_alloc) until released."""

    __slots__ = ("fault", "ctx", "refs")
    kind = "fault"

    def __init__(self, fault: Fault, ctx: IommufdCtx):
        self.fault = fault
        self.ctx = ctx

    def read(self, host, count: int) -> bytes:
        """iommufd_fault_fops_read: count not a multiple of the record -> ESPIPE; whole groups
        only (the first not fitting -> EINVAL); each group read gets a cookie (lowest free
        from 1) and waits in ``response``.  Nothing pending: 0 bytes."""
        fault = self.fault
        if count % PGFAULT_SIZE:
            raise KernelErr(errno.ESPIPE, f"read count {count} not a multiple of {PGFAULT_SIZE}")
        out = bytearray()
        while fault.deliver:
            group = fault.deliver[0]
            if len(out) >= count or len(group.faults) * PGFAULT_SIZE > count - len(out):
                if not out:
                    raise KernelErr(errno.EINVAL, "the first fault group does not fit the read")
                break
            fault.deliver.pop(0)
            cookie = 1
            while cookie in fault.response:
                cookie += 1
            group.cookie = cookie
            fault.response[cookie] = group
            for flags, pasid, grpid, perm, addr in group.faults:   # iommufd_compose_fault_message
                out += bytes(uapi.iommu_hwpt_pgfault(flags=flags, dev_id=group.idev.id, pasid=pasid, grpid=grpid,
                                                     perm=perm, addr=addr, length=0, cookie=cookie))
        return bytes(out)

    def write(self, host, data: bytes) -> int:
        """iommufd_fault_fops_write: struct iommu_hwpt_page_response records; a bad code or an
        unknown cookie -> EINVAL (after the records before it were taken)."""
        fault = self.fault
        if len(data) % RESPONSE_SIZE:
            raise KernelErr(errno.ESPIPE, f"write count {len(data)} not a multiple of {RESPONSE_SIZE}")
        done = 0
        while done < len(data):
            resp = uapi.iommu_hwpt_page_response.from_buffer_copy(data[done:done + RESPONSE_SIZE])
            err = None
            if resp.code not in (IOMMUFD_PAGE_RESP_SUCCESS, IOMMUFD_PAGE_RESP_INVALID):
                err = KernelErr(errno.EINVAL, f"response code {resp.code}")
            elif fault.response.pop(resp.cookie, None) is None:
                err = KernelErr(errno.EINVAL, f"no fault group with cookie {resp.cookie}")
            if err is not None:
                if done:
                    return done
                raise err
            done += RESPONSE_SIZE   # iopf_group_response: the mock's page_response does nothing
        return done

    def release(self, host) -> None:
        """iommufd_fault_fops_release: drop the FAULT user and the ctx reference."""
        self.fault.users -= 1
        host.put_ctx(self.ctx)

    def snapshot(self):
        return ("fault", self.fault.id)


def fault_alloc(ctx: IommufdCtx, cmd: uapi.iommu_fault_alloc) -> None:
    """iommufd_fault_alloc: flags -> EOPNOTSUPP; the object, its fd (a user and a ctx reference)."""
    if cmd.flags:
        raise KernelErr(errno.EOPNOTSUPP, "FAULT_QUEUE_ALLOC takes no flags")
    fault = ctx.alloc(Fault())
    fault.users += 1   # the file
    ctx.refs += 1      # iommufd_ctx_get
    cmd.out_fault_id = fault.id
    cmd.out_fault_fd = ctx.host.install_file(FaultFile(fault, ctx))
    ctx.finalize(fault)


# -- attach-time hooks (device.c iommufd_hwpt_attach_device / _detach_device / _replace_device) --
def iopf_enable(idev) -> None:
    """iommufd_fault_iopf_enable: the first enable turns IOPF on in the driver
    (mock_dev_enable_feat: the mock's iopf queue exists with CONFIG_IOMMU_IOPF)."""
    idev.iopf_enabled += 1


def iopf_disable(idev) -> None:
    """iommufd_fault_iopf_disable."""
    if idev.iopf_enabled:
        idev.iopf_enabled -= 1


def auto_response(hwpt, handle_idev) -> None:
    """iommufd_auto_response_faults: the pending groups of this attachment are answered
    IOMMU_PAGE_RESP_INVALID and dropped."""
    fault = hwpt.fault
    if fault is None:
        return
    fault.deliver[:] = [g for g in fault.deliver if not (g.hwpt is hwpt and g.idev is handle_idev)]
    for cookie in [c for c, g in fault.response.items() if g.hwpt is hwpt and g.idev is handle_idev]:
        del fault.response[cookie]


def report_device_fault(idev, flags: int, pasid: int, grpid: int, perm: int, addr: int) -> None:
    """iommu_report_device_fault for a LAST_PAGE request on ``idev``'s device: find the attach
    handle (find_fault_handler: a PASID-tagged fault goes, with the mock's user_pasid_table,
    to a NESTED domain on the RID), need IOPF enabled (iopf_param), hand the group to the
    HWPT's fault queue (iommufd_fault_iopf_handler).  No handler: the fault is dropped."""
    igroup = idev.igroup
    hwpt = igroup.hwpt
    if hwpt is None or igroup.handle is None:
        return
    if flags & IOMMU_FAULT_PAGE_REQUEST_PASID_VALID and hwpt.domain.kind != "nested":
        return
    if not idev.iopf_enabled or hwpt.fault is None:
        return
    hwpt.fault.deliver.append(IopfGroup([(flags, pasid, grpid, perm, addr)], igroup.handle, hwpt))
