"""struct iommufd_ctx: one per open of /dev/iommu.  Mirrors drivers/iommu/iommufd/main.c.

Objects are created in two phases as in the kernel: ``alloc`` reserves the lowest
free id (xa_alloc with XA_FLAGS_ALLOC1) where no lookup can see it, ``finalize``
publishes it, ``abort`` gives the id back -- so a failed ioctl leaves no trace.
"""
from __future__ import annotations

import errno

from .. import uapi
from .err import KernelErr

OBJ_DEVICE, OBJ_HWPT_PAGING, OBJ_HWPT_NESTED, OBJ_IOAS = "device", "hwpt_paging", "hwpt_nested", "ioas"
OBJ_ACCESS = "access"
OBJ_SELFTEST = "selftest"   # IOMMUFD_OBJ_SELFTEST (CONFIG_IOMMUFD_TEST)
OBJ_FAULT = "fault"         # IOMMUFD_OBJ_FAULT (IOMMU_FAULT_QUEUE_ALLOC, 6.11)


class Obj:
    """struct iommufd_object: id, type, and ``users`` (1 for the xarray + one per graph edge)."""

    __slots__ = ("id", "type", "users")
    _fixed = ("type", "id")   # never rebound once ``alloc`` numbers the new object (snapshot.fixed_slots)

    def __init__(self, type_: str):
        self.id = 0
        self.type = type_
        self.users = 1


class IommufdCtx:
    __slots__ = ("host", "fd", "objects", "building", "groups", "vfio_ioas", "refs", "account_mode")
    _fixed = ("host", "fd", "objects", "building", "groups")

    def __init__(self, host, fd: int):
        self.host = host
        self.fd = fd
        self.objects: dict[int, Obj] = {}   # finalized, visible to lookups
        self.building: dict[int, Obj] = {}  # reserved ids (XA_ZERO_ENTRY)
        self.groups: dict[str, object] = {} # iommufd_group per iommu_group (6.6+: ictx->groups)
        self.vfio_ioas = None               # the VFIO compat IOAS (IOMMU_VFIO_IOAS)
        self.refs = 1                       # the fd, each bound device, each VFIO group using it (host.put_ctx)
        self.account_mode = 0               # ictx->account_mode, kzalloc'd: IOPT_PAGES_ACCOUNT_NONE until RLIMIT_MODE

    # -- object table -----------------------------------------------------------
    def alloc(self, obj: Obj) -> Obj:
        """_iommufd_object_alloc: reserve the lowest free id; xa_alloc's EBUSY past the era's limit."""
        self.host.fallible("object alloc")
        limit = (1 << self.host.profile.id_bits) - 1
        i = 1
        while i in self.objects or i in self.building:
            i += 1
        if i > limit:
            raise KernelErr(errno.EBUSY, "object id space exhausted")
        obj.id = i
        self.building[i] = obj
        return obj

    def finalize(self, obj: Obj) -> None:
        """iommufd_object_finalize: make the object visible."""
        del self.building[obj.id]
        self.objects[obj.id] = obj

    def abort(self, obj: Obj) -> None:
        """iommufd_object_abort: the id is free again for the next allocation."""
        del self.building[obj.id]

    def get(self, obj_id: int, *types: str) -> Obj:
        """iommufd_get_object: unknown id or wrong type -> ENOENT."""
        obj = self.objects.get(obj_id)
        if obj is None or (types and obj.type not in types):
            raise KernelErr(errno.ENOENT, f"no {'/'.join(types) or 'object'} with id {obj_id}")
        return obj

    def remove(self, obj_id: int) -> None:
        """iommufd_object_remove via IOMMU_DESTROY: ENOENT, EBUSY unless the last user, then destroy."""
        obj = self.objects.get(obj_id)
        if obj is None:
            raise KernelErr(errno.ENOENT, f"no object with id {obj_id}")
        if obj.users != 1:
            raise KernelErr(errno.EBUSY, f"object {obj_id} ({obj.type}) still has {obj.users - 1} user(s)")
        self.destroy(obj)

    def destroy(self, obj: Obj) -> None:
        """Drop a finalized object whose last user is gone: the type's destroy op."""
        del self.objects[obj.id]
        if self.vfio_ioas is obj:
            self.vfio_ioas = None
        obj.destroy(self)

    def release(self) -> None:
        """iommufd_fops_release: destroy leaf-first until nothing is left.

        Devices are never destroyed here: each bound device holds a reference on the
        ctx (iommufd_device_bind), so release runs only after the last one is unbound."""
        while self.objects:
            progress = False
            for obj in sorted(self.objects.values(), key=lambda o: o.id):
                if obj.users == 1:
                    self.destroy(obj)
                    progress = True
                    break
            if not progress:
                raise AssertionError(f"iommufd release: objects still referenced: {sorted(self.objects)}")

    def snapshot(self):
        return (self.fd, tuple(sorted((i, o.type, o.users, o.snapshot()) for i, o in self.objects.items())),
                tuple(sorted(self.building)),
                tuple(sorted((k, g.snapshot()) for k, g in self.groups.items())),
                self.vfio_ioas.id if self.vfio_ioas else None, self.account_mode)


def option_rlimit_mode(ctx: IommufdCtx, cmd) -> None:
    """iommufd_option_rlimit_mode (ioas.c, 6.12.117): global (object_id != 0 -> EOPNOTSUPP);
    GET -> 1 iff IOPT_PAGES_ACCOUNT_MM; SET needs CAP_SYS_RESOURCE (EPERM; the emulated caller
    has it unless ``host.cap_sys_resource`` is False) and an empty object table (EBUSY):
    0 -> per-user accounting, 1 -> per-mm (VFIO's), else EINVAL."""
    from .pages import ACCOUNT_MM, ACCOUNT_USER
    if cmd.object_id:
        raise KernelErr(errno.EOPNOTSUPP, "RLIMIT_MODE is global: object_id must be 0")
    if cmd.op == uapi.IOMMU_OPTION_OP_GET:
        cmd.val64 = int(ctx.account_mode == ACCOUNT_MM)
        return
    if cmd.op != uapi.IOMMU_OPTION_OP_SET:
        raise KernelErr(errno.EOPNOTSUPP, f"unknown option op {cmd.op}")
    if not getattr(ctx.host, "cap_sys_resource", True):
        raise KernelErr(errno.EPERM, "RLIMIT_MODE needs CAP_SYS_RESOURCE")
    if ctx.objects or ctx.building:
        raise KernelErr(errno.EBUSY, "RLIMIT_MODE can only change while the iommufd has no objects")
    if cmd.val64 == 0:
        ctx.account_mode = ACCOUNT_USER
    elif cmd.val64 == 1:
        ctx.account_mode = ACCOUNT_MM
    else:
        raise KernelErr(errno.EINVAL, f"RLIMIT_MODE takes 0 or 1, not {cmd.val64}")


def iommufd_option(ctx: IommufdCtx, cmd) -> None:
    """IOMMU_OPTION: iommufd_option (main.c): __reserved -> EOPNOTSUPP; RLIMIT_MODE (global) or
    HUGE_PAGES (per IOAS); unknown option -> EOPNOTSUPP.  Only val64 is copied back (the
    ioctl layer writes the struct back; the other fields come back unchanged)."""
    if getattr(cmd, "__reserved"):
        raise KernelErr(errno.EOPNOTSUPP, "non-zero __reserved")
    if cmd.option_id == uapi.IOMMU_OPTION_RLIMIT_MODE:
        option_rlimit_mode(ctx, cmd)
    elif cmd.option_id == uapi.IOMMU_OPTION_HUGE_PAGES:
        _ioas.ioas_option(ctx, cmd)
    else:
        raise KernelErr(errno.EOPNOTSUPP, f"unknown option {cmd.option_id}")


from . import ioas as _ioas  # noqa: E402  (ioas.c and main.c call each other: a cycle, bound once loaded)
