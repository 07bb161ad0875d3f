"""HWPT objects: allocation, the CC decision, destroy.  Mirrors
drivers/iommu/iommufd/hw_pagetable.c (6.12.117; the 6.6 and 6.8 differences are
profile switches, see profiles.py)."""
from __future__ import annotations

import errno

from .. import uapi
from . import dirty
from .err import KernelErr
from .iommu import UserData, UserDataArray
from .main import OBJ_DEVICE, OBJ_FAULT, OBJ_HWPT_NESTED, OBJ_HWPT_PAGING, OBJ_IOAS, IommufdCtx, Obj

PAGE_SIZE = 4096


class HwptPaging(Obj):
    """struct iommufd_hwpt_paging.  ``enforce_cc`` is iommufd's own
    hwpt_paging->enforce_cache_coherency: set only when the driver agreed."""

    __slots__ = ("ioas", "domain", "auto_domain", "enforce_cc", "nest_parent", "filled", "fault")
    _fixed = ("ioas", "nest_parent")   # never rebound (snapshot.fixed_slots)

    def __init__(self, ioas, nest_parent: bool = False):
        Obj.__init__(self, OBJ_HWPT_PAGING)
        self.ioas = ioas
        self.domain = None
        self.auto_domain = False
        self.enforce_cc = False
        self.nest_parent = nest_parent
        self.filled = False   # added to the IOAS's io_pagetable (mirrors its mappings)
        self.fault = None     # hwpt->fault (HWPT_ALLOC with FAULT_ID_VALID; nested only in 6.12)

    def destroy(self, ctx: IommufdCtx) -> None:
        """iommufd_hwpt_paging_destroy: off the IOAS's list, unfill, free, drop the IOAS user."""
        hwpt_list = self.ioas.hwpt_list
        if self in hwpt_list:
            hwpt_list.remove(self)
        if self.filled:
            self.ioas.iopt.remove_domain(self.domain)
            self.filled = False
        if self.fault is not None:   # __iommufd_hwpt_destroy
            self.fault.users -= 1
        self.ioas.users -= 1

    def snapshot(self):
        return (self.ioas.id, self.domain.serial, self.auto_domain, self.enforce_cc, self.nest_parent, self.filled,
                self.fault.id if self.fault is not None else None)


class HwptNested(Obj):
    """struct iommufd_hwpt_nested: a stage-1 domain on a NEST_PARENT paging HWPT."""

    __slots__ = ("parent", "domain", "fault")
    _fixed = ("parent",)   # never rebound (snapshot.fixed_slots)

    def __init__(self, parent: HwptPaging):
        super().__init__(OBJ_HWPT_NESTED)
        self.parent = parent
        self.domain = None
        self.fault = None     # hwpt->fault (HWPT_ALLOC with FAULT_ID_VALID)

    @property
    def enforce_cc(self) -> bool:
        return self.parent.enforce_cc

    def destroy(self, ctx: IommufdCtx) -> None:
        """iommufd_hwpt_nested_destroy."""
        if self.fault is not None:
            self.fault.users -= 1
        self.parent.users -= 1

    def snapshot(self):
        return (self.parent.id, self.domain.serial, self.fault.id if self.fault is not None else None)


def is_paging(hwpt) -> bool:
    return isinstance(hwpt, HwptPaging)


def enforce_cc(hwpt: HwptPaging, host) -> None:
    """iommufd_hwpt_paging_enforce_cc: ask the driver once; EINVAL if it refuses or has no op."""
    if hwpt.enforce_cc:
        return
    if host.driver_of_domain(hwpt.domain).enforce_cache_coherency(hwpt.domain):
        hwpt.enforce_cc = True
        return
    raise KernelErr(errno.EINVAL, "the IOMMU driver cannot enforce cache coherency on this domain")


def paging_alloc(ctx: IommufdCtx, ioas, idev, flags: int, immediate_attach: bool, *, want_cc: bool | None = None,
                 user_data=None) -> HwptPaging:
    """iommufd_hwpt_paging_alloc (6.12.117) / iommufd_hw_pagetable_alloc (6.2-6.6).

    Returns an allocated, not yet finalized HWPT on the IOAS's list; the caller
    finalizes or aborts it (``abort_paging``).  The CC decision:
      * E1 (cc_at_alloc off): none here; the upgrade at the first attach decides.
      * E2/E3: enforce if the allocating device is CC-capable (a refusal is a driver bug: EINVAL).
      * proposal-want-cc: a user HWPT is CC iff the user asked (``want_cc``).
    In E1 the domain is added to the io_pagetable at its first attach
    (6.2.1 iommufd_device_do_attach), from 6.6 here, after the CC decision."""
    host, p = ctx.host, ctx.host.profile
    valid = uapi.IOMMU_HWPT_ALLOC_NEST_PARENT | uapi.IOMMU_HWPT_ALLOC_DIRTY_TRACKING if p.nesting else 0
    driver = host.driver_of(idev.dev)
    if (flags or user_data is not None) and not driver.has_domain_alloc_user:
        raise KernelErr(errno.EOPNOTSUPP, "driver has no domain_alloc_user")
    if flags & ~valid:
        raise KernelErr(errno.EOPNOTSUPP, f"unsupported HWPT_ALLOC flags {flags:#x}")
    if flags & uapi.IOMMU_HWPT_ALLOC_DIRTY_TRACKING and not driver.capable_dirty_tracking(idev.dev):
        raise KernelErr(errno.EOPNOTSUPP, "device's IOMMU cannot track dirty pages")
    hwpt = ctx.alloc(HwptPaging(ioas, bool(flags & uapi.IOMMU_HWPT_ALLOC_NEST_PARENT)))
    ioas.users += 1  # pairs with HwptPaging.destroy
    try:
        host.fallible("domain alloc")
        hwpt.domain = driver.domain_alloc(idev.dev, flags, nested_data=user_data is not None, user_data=user_data)
        if want_cc if want_cc is not None else (p.cc_at_alloc and idev.enforce_cc):
            enforce_cc(hwpt, host)
        if immediate_attach:
            _device.hw_pagetable_attach(ctx, hwpt, idev)
        if p.era != "E1":
            try:
                fill(hwpt, host)
            except KernelErr:
                if immediate_attach:
                    _device.hw_pagetable_detach(ctx, idev)
                raise
    except KernelErr:
        ioas.users -= 1
        ctx.abort(hwpt)
        raise
    ioas.hwpt_list.append(hwpt)  # list_add_tail: the auto-domain walk tries the oldest first
    return hwpt


def fill(hwpt: HwptPaging, host) -> None:
    """iopt_table_add_domain: the domain mirrors every mapping of the IOAS from now on (the
    first domain pins the pages from the process that mapped them: EFAULT)."""
    hwpt.ioas.iopt.add_domain(hwpt.domain, host)
    hwpt.filled = True


def abort_paging(ctx: IommufdCtx, hwpt: HwptPaging) -> None:
    """iommufd_object_abort_and_destroy for a paging HWPT that was never finalized."""
    HwptPaging.destroy(hwpt, ctx)
    ctx.abort(hwpt)


def nested_alloc(ctx: IommufdCtx, parent: HwptPaging, idev, flags: int, user_data) -> HwptNested:
    """iommufd_hwpt_nested_alloc (6.8+): flags other than FAULT_ID_VALID (6.11+; none before),
    no data or no domain_alloc_user -> EOPNOTSUPP; the parent must be a user-allocated
    NEST_PARENT of the same driver (EINVAL); the driver checks and copies the data."""
    host = ctx.host
    driver = host.driver_of(idev.dev)
    allowed = uapi.IOMMU_HWPT_FAULT_ID_VALID if host.profile.has("6.11") else 0   # fault.c
    if flags & ~allowed or not user_data.len or not driver.has_domain_alloc_user:
        raise KernelErr(errno.EOPNOTSUPP, "nested HWPT: no flags but FAULT_ID_VALID, and data required")
    if parent.auto_domain or not parent.nest_parent or host.driver_of_domain(parent.domain) is not driver:
        raise KernelErr(errno.EINVAL, "parent HWPT is not a user-allocated NEST_PARENT of this IOMMU")
    hwpt = ctx.alloc(HwptNested(parent))
    parent.users += 1  # pairs with HwptNested.destroy
    try:
        host.fallible("domain alloc")
        hwpt.domain = driver.domain_alloc(idev.dev, flags & ~uapi.IOMMU_HWPT_FAULT_ID_VALID, parent=parent.domain,
                                          nested_data=True, user_data=user_data)
    except KernelErr:
        parent.users -= 1
        ctx.abort(hwpt)
        raise
    return hwpt


def hwpt_alloc(ctx: IommufdCtx, cmd) -> None:
    """IOMMU_HWPT_ALLOC: iommufd_hwpt_alloc.

    6.6.0: flags or __reserved -> EOPNOTSUPP; dev_id, then pt_id as an IOAS (ENOENT).
    6.8/6.12.117: __reserved -> EOPNOTSUPP; data_type/data_len mismatch -> EINVAL; dev_id
    (ENOENT); pt_id any object (unknown -> EINVAL); IOAS -> paging, paging HWPT -> nested,
    anything else -> EINVAL.  The driver reads the data (struct iommu_user_data) itself.
    6.11+: FAULT_ID_VALID looks fault_id up after the allocation (ENOENT destroys the HWPT)."""
    p = ctx.host.profile
    flags = cmd.flags
    want_cc = None
    if p.want_cc_flag and flags & uapi.IOMMU_HWPT_ALLOC_PROPOSED_WANT_CC:
        flags &= ~uapi.IOMMU_HWPT_ALLOC_PROPOSED_WANT_CC
        want_cc = True
    elif p.want_cc_flag:
        want_cc = False
    if p.hwpt_alloc == "6.6":
        if flags or getattr(cmd, "__reserved"):
            raise KernelErr(errno.EOPNOTSUPP, "HWPT_ALLOC (6.6) takes no flags")
        idev = ctx.get(cmd.dev_id, OBJ_DEVICE)
        pt = ctx.get(cmd.pt_id, OBJ_IOAS)
        user_data = UserData(uapi.IOMMU_HWPT_DATA_NONE, 0, 0)
    else:
        if getattr(cmd, "__reserved"):  # 6.12.117 never looks at __reserved2
            raise KernelErr(errno.EOPNOTSUPP, "non-zero __reserved")
        user_data = UserData(cmd.data_type, cmd.data_uptr, cmd.data_len)
        if (cmd.data_type == uapi.IOMMU_HWPT_DATA_NONE) != (cmd.data_len == 0):
            raise KernelErr(errno.EINVAL, "data_type and data_len disagree")
        idev = ctx.get(cmd.dev_id, OBJ_DEVICE)
        try:
            pt = ctx.get(cmd.pt_id)
        except KernelErr:
            raise KernelErr(errno.EINVAL, f"no object with id {cmd.pt_id}") from None
    if pt.type == OBJ_IOAS:
        hwpt = paging_alloc(ctx, pt, idev, flags, False, want_cc=want_cc,
                            user_data=user_data if user_data.len else None)
    elif pt.type == OBJ_HWPT_PAGING:
        hwpt = nested_alloc(ctx, pt, idev, flags, user_data)
    else:
        raise KernelErr(errno.EINVAL, f"pt_id {cmd.pt_id} is a {pt.type}, not an IOAS or paging HWPT")
    if flags & uapi.IOMMU_HWPT_FAULT_ID_VALID:
        fault = ctx.objects.get(cmd.fault_id)
        if fault is None or fault.type != OBJ_FAULT:
            abort_hwpt(ctx, hwpt)
            raise KernelErr(errno.ENOENT, f"no fault queue with id {cmd.fault_id}")
        hwpt.fault = fault
        fault.users += 1   # pairs with the HWPT's destroy
    cmd.out_hwpt_id = hwpt.id
    ctx.finalize(hwpt)


def abort_hwpt(ctx: IommufdCtx, hwpt) -> None:
    """iommufd_object_abort_and_destroy of a HWPT of either kind."""
    if is_paging(hwpt):
        abort_paging(ctx, hwpt)
    else:
        HwptNested.destroy(hwpt, ctx)
        ctx.abort(hwpt)


# -- HWPT ioctls on an existing HWPT --------------------------------------------------------------
def hwpt_set_dirty_tracking(ctx: IommufdCtx, cmd) -> None:
    """IOMMU_HWPT_SET_DIRTY_TRACKING: iommufd_hwpt_set_dirty_tracking (6.7+): unknown flags
    EOPNOTSUPP, a paging HWPT (ENOENT), iopt_set_dirty_tracking.  __reserved is not checked."""
    if cmd.flags & ~uapi.IOMMU_HWPT_DIRTY_TRACKING_ENABLE:
        raise KernelErr(errno.EOPNOTSUPP, f"unknown flags {cmd.flags:#x}")
    hwpt = ctx.get(cmd.hwpt_id, OBJ_HWPT_PAGING)
    dirty.set_dirty_tracking(ctx.host, hwpt.ioas.iopt, hwpt.domain,
                             bool(cmd.flags & uapi.IOMMU_HWPT_DIRTY_TRACKING_ENABLE))


def hwpt_get_dirty_bitmap(ctx: IommufdCtx, cmd) -> None:
    """IOMMU_HWPT_GET_DIRTY_BITMAP: iommufd_hwpt_get_dirty_bitmap (6.7+): flags other than
    NO_CLEAR or __reserved -> EOPNOTSUPP, a paging HWPT (ENOENT), iopt_read_and_clear_dirty_data."""
    if cmd.flags & ~uapi.IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR or getattr(cmd, "__reserved"):
        raise KernelErr(errno.EOPNOTSUPP, "unknown flags or non-zero __reserved")
    hwpt = ctx.get(cmd.hwpt_id, OBJ_HWPT_PAGING)
    dirty.read_and_clear_dirty_data(ctx.host, hwpt.ioas.iopt, hwpt.domain, cmd.flags, cmd)


INVALIDATE_ENTRY_NUM_MAX = 1 << 19   # IOMMU_HWPT_INVALIDATE_ENTRY_NUM_MAX (6.12.117)


def hwpt_invalidate(ctx: IommufdCtx, cmd) -> None:
    """IOMMU_HWPT_INVALIDATE: iommufd_hwpt_invalidate (6.8+, 6.12.117).  __reserved EOPNOTSUPP;
    entries but no data_uptr, entry_len 0 or above PAGE_SIZE, or more than 2^19 -> EINVAL; a
    nested HWPT (ENOENT); the driver's cache_invalidate_user.  entry_num is written back with
    the number of entries handled whatever the outcome (the struct is always responded)."""
    done = 0
    try:
        if getattr(cmd, "__reserved"):
            raise KernelErr(errno.EOPNOTSUPP, "non-zero __reserved")
        if cmd.entry_num and (not cmd.data_uptr or not cmd.entry_len or cmd.entry_len > PAGE_SIZE
                              or cmd.entry_num > INVALIDATE_ENTRY_NUM_MAX):
            raise KernelErr(errno.EINVAL, "entries without data_uptr, or entry_len/entry_num out of range")
        hwpt = ctx.get(cmd.hwpt_id, OBJ_HWPT_NESTED)
        array = UserDataArray(cmd.data_type, cmd.data_uptr, cmd.entry_len, cmd.entry_num)
        try:
            ctx.host.driver_of_domain(hwpt.domain).cache_invalidate_user(hwpt.domain, array)
        finally:
            done = array.entry_num
    except KernelErr as e:
        cmd.entry_num = done
        e.respond = True
        raise
    cmd.entry_num = done


def hwpt_put(ctx: IommufdCtx, hwpt) -> None:
    """iommufd_hw_pagetable_put: drop a device's user; an auto-domain dies with its last device."""
    hwpt.users -= 1
    if hwpt.users == 1 and isinstance(hwpt, HwptPaging) and hwpt.auto_domain:
        ctx.destroy(hwpt)


from . import device as _device  # noqa: E402  (device.c calls back into us: a cycle, bound once loaded)
