"""struct iommufd_ctx: one per open of /dev/iommu.  Mirrors drivers/iommu/iommufd/main.c.

Objects are created in two phases as in the kernel: ``alloc`` reserves the lowest
free id (xa_alloc with XA_FLAGS_ALLOC1) where no lookup can see it, ``finalize``
publishes it, ``abort`` gives the id back -- so a failed ioctl leaves no trace.
"""
from __future__ import annotations

import errno

from .err import KernelErr

OBJ_DEVICE, OBJ_HWPT_PAGING, OBJ_HWPT_NESTED, OBJ_IOAS = "device", "hwpt_paging", "hwpt_nested", "ioas"
OBJ_SELFTEST = "selftest"   # IOMMUFD_OBJ_SELFTEST (CONFIG_IOMMUFD_TEST)
OBJ_FAULT = "fault"         # IOMMUFD_OBJ_FAULT (IOMMU_FAULT_QUEUE_ALLOC, 6.11)


class Obj:
    """struct iommufd_object: id, type, and ``users`` (1 for the xarray + one per graph edge)."""

    __slots__ = ("id", "type", "users")

    def __init__(self, type_: str):
        self.id = 0
        self.type = type_
        self.users = 1


class IommufdCtx:
    __slots__ = ("host", "fd", "objects", "building", "groups", "vfio_ioas", "refs")

    def __init__(self, host, fd: int):
        self.host = host
        self.fd = fd
        self.objects: dict[int, Obj] = {}   # finalized, visible to lookups
        self.building: dict[int, Obj] = {}  # reserved ids (XA_ZERO_ENTRY)
        self.groups: dict[str, object] = {} # iommufd_group per iommu_group (6.6+: ictx->groups)
        self.vfio_ioas = None               # the VFIO compat IOAS (IOMMU_VFIO_IOAS)
        self.refs = 1                       # the fd, each bound device, each VFIO group using it (host.put_ctx)

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
                self.vfio_ioas.id if self.vfio_ioas else None)
