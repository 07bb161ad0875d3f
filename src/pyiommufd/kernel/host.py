"""The emulated host kernel: devices, groups, open files, iommufd contexts, KVM.

``Host.ioctl`` is the uAPI seam: it receives the caller's buffer and decodes it as
the kernel does -- iommufd_fops_ioctl's ``size`` handling (min_size from the last
field of the struct's first version: EINVAL below it; copy_struct_from_user: E2BIG for
a non-zero tail past the kernel's struct), VFIO's ``argsz``/minsz, ENOTTY for unknown
requests -- runs the handler, and writes back only on success.
"""
from __future__ import annotations

import copy
import ctypes
import errno

from .. import uapi
from ..errors import EmulationGap
from ..profiles import release_tuple
from . import device as idevice
from . import fault, fault_inject, hw_pagetable, ioas, kvm as kvmmod, selftest, selftest_pages, vfio, vfio_compat  # noqa: F401 (selftest_pages registers its ops)
from .drivers import DRIVERS
from .drivers.mock import MockDev, MockDriver
from .drivers.base import Domain
from .err import KernelErr
from .iommu import IommuGroup
from .main import IommufdCtx, iommufd_option

# First release of each iommufd command (nr -> (introduced, handler or None = not modelled)).
_IOMMUFD_OPS = {
    uapi.IOMMUFD_CMD_DESTROY: "6.2", uapi.IOMMUFD_CMD_IOAS_ALLOC: "6.2", uapi.IOMMUFD_CMD_IOAS_ALLOW_IOVAS: "6.2",
    uapi.IOMMUFD_CMD_IOAS_COPY: "6.2", uapi.IOMMUFD_CMD_IOAS_IOVA_RANGES: "6.2", uapi.IOMMUFD_CMD_IOAS_MAP: "6.2",
    uapi.IOMMUFD_CMD_IOAS_UNMAP: "6.2", uapi.IOMMUFD_CMD_OPTION: "6.2", uapi.IOMMUFD_CMD_VFIO_IOAS: "6.2",
    uapi.IOMMUFD_CMD_HWPT_ALLOC: "6.6", uapi.IOMMUFD_CMD_GET_HW_INFO: "6.6",
    uapi.IOMMUFD_CMD_HWPT_SET_DIRTY_TRACKING: "6.7", uapi.IOMMUFD_CMD_HWPT_GET_DIRTY_BITMAP: "6.7",
    uapi.IOMMUFD_CMD_HWPT_INVALIDATE: "6.8", uapi.IOMMUFD_CMD_FAULT_QUEUE_ALLOC: "6.11",
    uapi.IOMMUFD_CMD_TEST: "6.2",   # CONFIG_IOMMUFD_TEST: every conformance kernel has it
}
_MIN_FIELD_FIRST_VERSION = {  # IOCTL_OP(..., _last): min_size = offsetofend of this field
    uapi.IOMMUFD_CMD_DESTROY: (uapi.iommu_destroy, "id"),
    uapi.IOMMUFD_CMD_IOAS_ALLOC: (uapi.iommu_ioas_alloc, "out_ioas_id"),
    uapi.IOMMUFD_CMD_IOAS_MAP: (uapi.iommu_ioas_map, "iova"),
    uapi.IOMMUFD_CMD_IOAS_UNMAP: (uapi.iommu_ioas_unmap, "length"),
    uapi.IOMMUFD_CMD_VFIO_IOAS: (uapi.iommu_vfio_ioas, "__reserved"),
    uapi.IOMMUFD_CMD_HWPT_ALLOC: (uapi.iommu_hwpt_alloc_v6_6, "__reserved"),
    uapi.IOMMUFD_CMD_GET_HW_INFO: (uapi.iommu_hw_info_v6_6, "__reserved"),
    uapi.IOMMUFD_CMD_TEST: (uapi.iommu_test_cmd, "last"),
    uapi.IOMMUFD_CMD_HWPT_SET_DIRTY_TRACKING: (uapi.iommu_hwpt_set_dirty_tracking, "__reserved"),
    uapi.IOMMUFD_CMD_HWPT_GET_DIRTY_BITMAP: (uapi.iommu_hwpt_get_dirty_bitmap, "data"),
    uapi.IOMMUFD_CMD_HWPT_INVALIDATE: (uapi.iommu_hwpt_invalidate, "__reserved"),
    uapi.IOMMUFD_CMD_FAULT_QUEUE_ALLOC: (uapi.iommu_fault_alloc, "out_fault_fd"),
    uapi.IOMMUFD_CMD_IOAS_IOVA_RANGES: (uapi.iommu_ioas_iova_ranges, "out_iova_alignment"),
    uapi.IOMMUFD_CMD_IOAS_ALLOW_IOVAS: (uapi.iommu_ioas_allow_iovas, "allowed_iovas"),
    uapi.IOMMUFD_CMD_IOAS_COPY: (uapi.iommu_ioas_copy, "src_iova"),
    uapi.IOMMUFD_CMD_OPTION: (uapi.iommu_option, "val64"),
}

# How the caller's ioctl argument reaches Host.ioctl (``pyiommufd emulate``'s server builds
# ``buf`` by these rules; in-process callers do the same):
#  * ARG_IS_VALUE: the kernel uses ``arg`` itself as a number (VFIO_SET_IOMMU and
#    VFIO_CHECK_EXTENSION on an iommufd, VFIO_GET_API_VERSION ignores it): ``buf`` holds the
#    8-byte little-endian value of arg.
#  * ARGSZ_MINSZ: VFIO type1 requests whose struct starts with ``__u32 argsz``: ``buf`` is the
#    caller's memory at arg, max(argsz, minsz) bytes (the kernel copies minsz in, and
#    VFIO_IOMMU_GET_INFO writes its capability chain anywhere below argsz).
#  * iommufd commands: ``buf`` is the struct at arg, ``size`` bytes (its first u32).
ARG_IS_VALUE = frozenset({uapi.VFIO_GET_API_VERSION, uapi.VFIO_CHECK_EXTENSION, uapi.VFIO_SET_IOMMU})
ARGSZ_MINSZ = vfio_compat.ARGSZ_MINSZ


_version = release_tuple


def _destroy(ctx, cmd) -> None:
    ctx.remove(cmd.id)


def _get_hw_info(ctx, cmd) -> None:
    idevice.get_hw_info(ctx, cmd, ctx.host.mem)


_OP_TABLES: dict[tuple, dict] = {}


def _iommufd_handlers(profile) -> dict:
    """iommufd command nr -> (handler, kernel struct) for every command the emulator models, with
    the struct layouts of this profile's kernel (whether the kernel has the command is
    _IOMMUFD_OPS's business)."""
    handlers = {uapi.IOMMUFD_CMD_DESTROY: (_destroy, uapi.iommu_destroy),
                uapi.IOMMUFD_CMD_IOAS_ALLOC: (ioas.ioas_alloc, uapi.iommu_ioas_alloc),
                uapi.IOMMUFD_CMD_IOAS_MAP: (ioas.ioas_map, uapi.iommu_ioas_map),
                uapi.IOMMUFD_CMD_IOAS_UNMAP: (ioas.ioas_unmap, uapi.iommu_ioas_unmap),
                uapi.IOMMUFD_CMD_VFIO_IOAS: (ioas.vfio_ioas, uapi.iommu_vfio_ioas),
                uapi.IOMMUFD_CMD_TEST: (selftest.iommufd_test, uapi.iommu_test_cmd),
                uapi.IOMMUFD_CMD_HWPT_SET_DIRTY_TRACKING: (hw_pagetable.hwpt_set_dirty_tracking,
                                                          uapi.iommu_hwpt_set_dirty_tracking),
                uapi.IOMMUFD_CMD_HWPT_GET_DIRTY_BITMAP: (hw_pagetable.hwpt_get_dirty_bitmap,
                                                        uapi.iommu_hwpt_get_dirty_bitmap),
                uapi.IOMMUFD_CMD_HWPT_INVALIDATE: (hw_pagetable.hwpt_invalidate, uapi.iommu_hwpt_invalidate),
                uapi.IOMMUFD_CMD_FAULT_QUEUE_ALLOC: (fault.fault_alloc, uapi.iommu_fault_alloc),
                uapi.IOMMUFD_CMD_IOAS_IOVA_RANGES: (ioas.ioas_iova_ranges, uapi.iommu_ioas_iova_ranges),
                uapi.IOMMUFD_CMD_IOAS_ALLOW_IOVAS: (ioas.ioas_allow_iovas, uapi.iommu_ioas_allow_iovas),
                uapi.IOMMUFD_CMD_IOAS_COPY: (ioas.ioas_copy, uapi.iommu_ioas_copy),
                uapi.IOMMUFD_CMD_OPTION: (iommufd_option, uapi.iommu_option)}
    if profile.hwpt_alloc is not None:
        handlers[uapi.IOMMUFD_CMD_HWPT_ALLOC] = (hw_pagetable.hwpt_alloc,
                                                 uapi.HWPT_ALLOC_LAYOUTS[profile.hwpt_alloc])
    if profile.hw_info is not None:
        handlers[uapi.IOMMUFD_CMD_GET_HW_INFO] = (_get_hw_info, uapi.HW_INFO_LAYOUTS[profile.hw_info])
    return handlers


_OP_TABLE_OF: dict[int, tuple] = {}   # id(profile) -> (profile, its table): no key to build per call


def _iommufd_op_table(profile) -> dict:
    """request -> (handler, kernel struct, min_size, struct size) for every iommufd command this
    profile's kernel knows and the emulator models (what ``_iommufd_ioctl_checked`` works out per
    call, once per kernel).  Keyed by the profile switches the answer depends on."""
    known = _OP_TABLE_OF.get(id(profile))
    if known is not None and known[0] is profile:
        return known[1]
    key = (profile.kernel, profile.hwpt_alloc, profile.hw_info)
    table = _OP_TABLES.get(key)
    if table is None:
        handlers = _iommufd_handlers(profile)
        kernel = _version(profile.kernel)
        table = {}
        for nr, (handler, kstruct) in handlers.items():
            if _version(_IOMMUFD_OPS[nr]) <= kernel:
                first, last_field = _MIN_FIELD_FIRST_VERSION[nr]
                table[uapi._IO(uapi.IOMMUFD_TYPE, nr)] = (handler, kstruct, uapi.offsetofend(first, last_field),
                                                          ctypes.sizeof(kstruct))
        _OP_TABLES[key] = table
    _OP_TABLE_OF[id(profile)] = (profile, table)   # the profile is kept alive: its id stays its own
    return table


def _out_field(kstruct, name: str) -> tuple[int, int]:
    fld = getattr(kstruct, name)
    return fld.offset, fld.offset + fld.size


# VFIO cdev ioctls: request -> (struct, minsz (offsetofend of the last field read), handler, field copied back)
_CDEV_OPS = {
    uapi.VFIO_DEVICE_BIND_IOMMUFD: (uapi.vfio_device_bind_iommufd,
                                    uapi.offsetofend(uapi.vfio_device_bind_iommufd, "out_devid"), vfio.cdev_bind,
                                    _out_field(uapi.vfio_device_bind_iommufd, "out_devid")),
    uapi.VFIO_DEVICE_ATTACH_IOMMUFD_PT: (uapi.vfio_device_attach_iommufd_pt,
                                         uapi.offsetofend(uapi.vfio_device_attach_iommufd_pt, "pt_id"),
                                         vfio.cdev_attach, _out_field(uapi.vfio_device_attach_iommufd_pt, "pt_id")),
    uapi.VFIO_DEVICE_DETACH_IOMMUFD_PT: (uapi.vfio_device_detach_iommufd_pt,
                                         uapi.offsetofend(uapi.vfio_device_detach_iommufd_pt, "flags"),
                                         vfio.cdev_detach, None),
}


def _copy_out_whole(buf, cmd, n: int) -> None:
    """copy_to_user of all ``n`` bytes of ``cmd`` to the start of the caller's buffer (as long or longer)."""
    if type(buf) is bytearray:
        buf[:n] = cmd
    else:
        memoryview(buf).cast("B")[:n] = memoryview(cmd).cast("B")


# The _CDEV_OPS requests whose minsz is the whole struct (copy_from_user of minsz bytes = the struct),
# with the field copied back as (struct.pack_into of its type, offset, name), or None.
_WHOLE_STRUCT = {req: out and uapi.field_packer(kstruct, out)
                 for req, (kstruct, minsz, _, out) in _CDEV_OPS.items() if minsz == ctypes.sizeof(kstruct)}


class UserMemory:
    """The emulated process's anonymous mappings, so the kernel can copy to user pointers.

    Sparse: a mapping reserves address space only; a page gets bytes when first written
    (a VMM maps gigabytes of guest RAM, the kernel writes a few structs)."""

    __slots__ = ("maps", "pages", "next_addr")
    LIMIT = 1 << 47            # the x86-64 user address space
    alive = True               # kernel/pages.py memory protocol: the one in-process address space

    @property
    def mm_key(self):
        return self

    def __init__(self):
        self.maps: dict[int, int] = {}            # base -> length
        self.pages: dict[int, bytearray] = {}     # page address -> contents
        self.next_addr = 0x7F0000000000 >> 8      # well below LIMIT, room for large maps

    def mmap(self, length: int) -> int:
        size = max(1, -(-length // 4096)) * 4096
        if self.next_addr + size + 4096 > self.LIMIT:
            raise KernelErr(errno.ENOMEM, f"mmap of {length:#x} bytes: no room in the address space")
        addr = self.next_addr
        self.maps[addr] = size
        self.next_addr += size + 4096             # a guard page between mappings
        return addr

    def probe(self, addr: int, length: int) -> None:
        """Is [addr, addr+length) mapped?  KernelErr(EFAULT) if not (pin_user_pages without data)."""
        self._check(addr, length)

    def _check(self, addr: int, length: int) -> None:
        if not any(base <= addr and addr + length <= base + size for base, size in self.maps.items()):
            raise KernelErr(errno.EFAULT, f"user address {addr:#x} not mapped")

    def write(self, addr: int, data: bytes) -> None:
        self._check(addr, len(data))
        for i, b in enumerate(data):
            page = (addr + i) & ~4095
            buf = self.pages.get(page)
            if buf is None:
                buf = self.pages[page] = bytearray(4096)
            buf[(addr + i) & 4095] = b

    def read(self, addr: int, length: int) -> bytes:
        self._check(addr, length)
        return bytes((self.pages.get((a & ~4095)) or bytes(4096))[a & 4095] for a in range(addr, addr + length))


class CallerFds:
    """The calling process's fd table as the kernel's fdget / fd_install see it.

    In-process callers (client, runner, explorer) use the host's own fd numbers, so both are
    the identity.  ``pyiommufd emulate`` swaps in, per call, the table of the real client
    process: ``resolve`` then asks that process for the file (SCM_RIGHTS) and ``install`` hands
    it a new one, so a program's fd numbers are its own."""

    __slots__ = ()

    def resolve(self, n: int) -> int:
        """fdget(n): the host fd of the caller's fd ``n`` (KernelErr EBADF if it is not open)."""
        return n

    def install(self, host_fd: int) -> int:
        """get_unused_fd_flags + fd_install: the caller's number for a new file."""
        return host_fd


class Host:
    """One emulated machine running one kernel (a profile) with one VMM process.

    ``mem`` is the calling process's memory (copy_from_user / copy_to_user: ``read`` and
    ``write`` raise KernelErr(EFAULT)), ``fds`` its fd table (CallerFds); ``pyiommufd emulate``
    swaps both per call, everything else is the one machine."""

    __slots__ = ("system", "profile", "units", "devices", "groups", "driver", "mock_driver", "mock_devs", "files",
                 "ctxs", "kvm", "mem", "fds", "remote_mem", "next_fd", "domain_serial", "fail_nth", "fallible_count",
                 "thp", "cap_ipc_lock", "cap_sys_resource", "test_memory_limit", "task", "task_fail_nth")
    # set here and never rebound (snapshot.fixed_slots); the others change (emulate swaps mem, fds, task per call)
    _fixed = ("system", "profile", "units", "devices", "groups", "driver", "mock_driver", "mock_devs", "files",
              "ctxs", "kvm", "task_fail_nth")

    def __init__(self, system, profile):
        self.system = system
        self.profile = profile
        self.units = {u.name: u for u in system.units}
        self.devices = {d.name: vfio.PhysDevice(d) for d in system.devices}
        self.groups = {g: IommuGroup(g, [d.name for d in system.devices if d.group == g]) for g in system.groups}
        self.driver = DRIVERS[system.iommu](self)
        # The selftest mock IOMMU (CONFIG_IOMMUFD_TEST) drives the devices IOMMU_TEST_OP_MOCK_DOMAIN
        # makes; it is the system's driver on a mock system.  A device without a fwspec is probed
        # by the first IOMMU registered without a fwnode (__iommu_probe_device,
        # iommu_fwspec_ops(NULL)): Intel and AMD register so at boot, before the selftest, and
        # their probe_device refuses the non-PCI mock device -- no IOMMU for it (None), as the
        # conformance VM shows (the mock only probes without intel-iommu).  SMMUv3 and
        # virtio-iommu register with a fwnode and leave mock devices to the mock.
        self.mock_driver = (self.driver if system.iommu == "mock" else
                            None if system.iommu in ("intel", "amd") else MockDriver(self))
        self.mock_devs: dict[str, MockDev] = {}   # name -> mock device (selftest.c mock_dev_create)
        self.files: dict[int, object] = {}     # fd -> open file
        self.ctxs: dict[int, IommufdCtx] = {}  # fd -> iommufd ctx (also in files)
        self.kvm = kvmmod.Kvm() if system.kvm else None
        self.mem = UserMemory()
        self.fds = CallerFds()
        self.remote_mem = None   # pyiommufd emulate: another process's memory by its mm_key (kernel/pages.py)
        self.next_fd = 3
        self.domain_serial = 0
        self.fail_nth = 0      # fail the Nth fallible step (0: never), as iommufd_fail_nth does
        self.fallible_count = 0
        # Kernel configuration and caller privileges the model consults (SPEC.md section 12):
        self.thp = False               # CONFIG_TRANSPARENT_HUGEPAGE: iopt_alloc_iova aligns up to 2 MiB
        self.cap_ipc_lock = True       # root: pinned pages are not charged to RLIMIT_MEMLOCK
        self.cap_sys_resource = True   # root: IOMMU_OPTION_RLIMIT_MODE may be set
        self.test_memory_limit = 65536  # selftest.c iommufd_test_memory_limit (module-wide)
        self.task = 0          # the calling task (pyiommufd emulate: its pid; in-process: 0)
        self.task_fail_nth: dict[int, int] = {}   # task->fail_nth (kernel/fault_inject.py)

    # -- bookkeeping ---------------------------------------------------------------
    def new_domain(self, driver: str, **kw) -> Domain:
        self.domain_serial += 1
        return Domain(driver, self.domain_serial, **kw)

    def fallible(self, what: str, err: int = errno.ENOMEM) -> None:
        """A step that can fail in the kernel (allocation, reserved regions, an
        iommufd_should_fail() site): fail-nth hook; ``err`` is what that site returns."""
        self.fallible_count += 1
        if self.fail_nth and self.fallible_count == self.fail_nth:
            raise KernelErr(err, f"fail-nth: injected failure at {what}")

    def driver_of(self, dev):
        """dev_iommu_ops(dev): the mock driver for a mock device, else the system's IOMMU."""
        return self.mock_driver if isinstance(dev, MockDev) else self.driver

    def driver_of_domain(self, domain):
        """domain->ops: the driver that allocated ``domain``."""
        return self.mock_driver if domain.driver == "mock" else self.driver

    def group_of(self, dev) -> IommuGroup:
        """dev->iommu_group."""
        return dev.iommu_group if isinstance(dev, MockDev) else self.groups[dev.group]

    def device_named(self, name: str):
        dev = self.devices.get(name)
        return dev if dev is not None else self.mock_devs[name]

    def clone(self) -> "Host":
        return copy.deepcopy(self)

    def fdget(self, n: int) -> int:
        """fdget on the caller's fd ``n``: the host fd of that open file, or KernelErr(EBADF)."""
        fd = self.fds.resolve(n)
        if fd not in self.files:
            raise KernelErr(errno.EBADF, f"fd {n} is not open")
        return fd

    def install_file(self, f) -> int:
        """get_unused_fd_flags + fd_install: a new open file; returns the caller's fd number."""
        f.refs = 1
        fd = self._new_fd()
        self.files[fd] = f
        return self.fds.install(fd)

    def ctx_from_fd(self, n: int) -> IommufdCtx:
        """iommufd_ctx_from_fd: EBADF for a closed fd, EBADFD for a file that is not an iommufd."""
        return self.ctx_from_file(self.fdget(n))

    def ctx_from_file(self, fd: int) -> IommufdCtx:
        """iommufd_ctx_from_file on the open file at host fd ``fd``: EBADFD unless an iommufd."""
        ctx = self.ctxs.get(fd)
        if ctx is None:
            raise KernelErr(errno.EBADFD, f"fd {fd} is not an iommufd")
        return ctx

    # -- files -----------------------------------------------------------------------
    def open(self, path: str) -> int:
        if path in ("/dev/iommu", "/dev/vfio/vfio"):
            # iommufd_fops_open (main.c, 6.2.1 and 6.12.117): with CONFIG_IOMMUFD_VFIO_CONTAINER (the
            # conformance kernels) iommufd also provides /dev/vfio/vfio, a ctx that accounts pinned
            # pages as VFIO does (IOPT_PAGES_ACCOUNT_MM) and takes the VFIO container ioctls
            fd = self._new_fd()
            ctx = IommufdCtx(self, fd)
            if path == "/dev/vfio/vfio":
                from .pages import ACCOUNT_MM
                ctx.account_mode = ACCOUNT_MM
            ctx.refs = 1
            self.ctxs[fd] = ctx
            self.files[fd] = ctx
            return fd
        m = fault_inject.PATH.match(path)
        if m:   # /proc/<pid>/task/<tid>/fail-nth: the caller's (a task is a process here)
            f = fault_inject.FailNthFile(self.task)
            f.refs = 1
            fd = self._new_fd()
            self.files[fd] = f
            return fd
        if path.startswith("/dev/vfio/devices/vfio"):
            if not self.profile.vfio_cdev:
                raise KernelErr(errno.ENOENT, f"{path}: no VFIO device cdevs before 6.6")
            n = path[len("/dev/vfio/devices/vfio"):]
            dev = next((d for d in self.devices.values() if str(d.cdev) == n), None)
            if dev is None:
                raise KernelErr(errno.ENOENT, f"{path}: no such device")
            f = vfio.CdevFile(dev)
        elif path.startswith("/dev/vfio/"):
            g = path[len("/dev/vfio/"):]
            if g not in self.groups:
                raise KernelErr(errno.ENOENT, f"{path}: no such group")
            if any(getattr(o, "group", None) == g and o.kind == "group" for o in self.files.values()):
                raise KernelErr(errno.EBUSY, f"{path}: group already open")
            if any(self.devices[d].open_via == "cdev" for d in self.groups[g].devices):
                raise KernelErr(errno.EBUSY, f"{path}: a device of the group is bound through its cdev")
            f = vfio.GroupFile(g)
        else:
            raise KernelErr(errno.ENOENT, f"{path}: not emulated")
        f.refs = 1
        fd = self._new_fd()
        self.files[fd] = f
        return fd

    def _new_fd(self) -> int:
        fd = self.next_fd
        while fd in self.files:
            fd += 1
        self.next_fd = fd + 1
        return fd

    def close(self, fd: int) -> None:
        f = self.files.pop(fd, None)
        if f is None:
            raise KernelErr(errno.EBADF, f"fd {fd} is not open")
        self.put_file(f)

    def put_ctx(self, ctx: IommufdCtx) -> None:
        """iommufd_ctx_put: the ctx's file holds one reference, every bound device one
        (iommufd_device_bind's iommufd_ctx_get) and every VFIO group using it as its container
        one (group->iommufd); the last put runs iommufd_fops_release."""
        ctx.refs -= 1
        if not ctx.refs:
            ctx.release()
            del self.ctxs[ctx.fd]

    def put_file(self, f) -> None:
        """fput: the file is released when no fd and no kernel user (KVM) holds it."""
        if isinstance(f, IommufdCtx):
            self.put_ctx(f)
            return
        f.refs -= 1
        if f.refs:
            return
        if f.kind == "group":
            if f.ctx_fd is not None:   # vfio_group_fops_release: iommufd_ctx_put(group->iommufd)
                self.put_ctx(self.ctxs[f.ctx_fd])
                f.ctx_fd = None
        elif f.kind == "cdev":
            if f.access_granted:
                vfio.physical_unbind(self, f.dev)
        elif f.kind == "group-device":
            vfio.physical_unbind(self, f.dev)
        elif hasattr(f, "release"):   # file_operations.release of other emulated files
            f.release(self)
        if self.kvm is not None and f.kind in ("cdev", "group", "group-device"):
            kvmmod.update_coherency(self, self.kvm)

    def _file_op(self, fd: int, op: str):
        """The open file's ``op`` method; EBADF for a closed fd, EINVAL for a file without one
        (vfs_read / vfs_write on file_operations without .read / .write: iommufd_fops, vfio's)."""
        f = self.files.get(fd)
        if f is None:
            raise KernelErr(errno.EBADF, f"fd {fd} is not open")
        fn = getattr(f, op, None)
        if fn is None:
            raise KernelErr(errno.EINVAL, f"this file has no {op}")
        return fn

    def read(self, fd: int, count: int) -> bytes:
        """read(2) on an emulated file: the file's ``read(host, count)`` (fault queues, fail-nth)."""
        return self._file_op(fd, "read")(self, count)

    def write(self, fd: int, data: bytes) -> int:
        """write(2) on an emulated file: the file's ``write(host, data)``."""
        return self._file_op(fd, "write")(self, data)

    # -- ioctl -------------------------------------------------------------------------
    def ioctl(self, fd: int, request: int, buf) -> int:
        """Decode ``buf`` (a writable buffer: ctypes struct or bytearray) as the kernel would.
        Returns the ioctl's value (VFIO_CHECK_EXTENSION answers through it).  For requests in
        ARG_IS_VALUE the kernel uses the argument as a number: ``buf`` then holds it as 8
        little-endian bytes; VFIO type1 requests (ARGSZ_MINSZ) pass max(argsz, minsz) bytes of
        the caller's struct."""
        f = self.files.get(fd)
        if f is None:
            raise KernelErr(errno.EBADF, f"fd {fd} is not open")
        if isinstance(f, IommufdCtx):
            return self._iommufd_ioctl(f, request, buf)
        if f.kind == "cdev":
            return self._cdev_ioctl(f, request, buf)
        if f.kind == "group":
            return self._group_ioctl(f, request, buf)
        raise KernelErr(errno.ENOTTY, "device ioctls other than iommufd's are not modelled")

    def _iommufd_ioctl(self, ctx: IommufdCtx, request: int, buf) -> int:
        op = _iommufd_op_table(self.profile).get(request)
        if op is None:   # unknown, too new, malformed request number or not modelled: the full path
            return self._iommufd_ioctl_checked(ctx, request, buf)
        handler, kstruct, min_size, ksize = op
        # The common case first: the buffer holds the kernel's struct and ``size`` says exactly
        # that (a caller built against this kernel's header).  Then copy_struct_from_user copies
        # ksize bytes, has no tail to check, and the answer is the whole struct.
        try:
            cmd = kstruct.from_buffer_copy(buf)
        except (ValueError, TypeError):   # shorter than the struct (or not a buffer): in full below
            cmd = None
        if cmd is not None and cmd.size == ksize:
            try:
                handler(ctx, cmd)
            except KernelErr as e:
                if e.respond:   # the handler responded, then failed (IOAS_IOVA_RANGES' EMSGSIZE)
                    _copy_out_whole(buf, cmd, ksize)
                raise
            _copy_out_whole(buf, cmd, ksize)   # iommufd_ucmd_respond
            return 0
        return self._iommufd_ioctl_sized(ctx, handler, kstruct, min_size, ksize, buf)

    def _iommufd_ioctl_sized(self, ctx: IommufdCtx, handler, kstruct, min_size: int, ksize: int, buf) -> int:
        """iommufd_fops_ioctl's size handling for a command in the table, whatever ``size`` says."""
        mv = memoryview(buf).cast("B")
        if len(mv) < 4:
            raise KernelErr(errno.EFAULT, "buffer shorter than the size field")
        user_size = int.from_bytes(mv[:4], "little")
        if user_size < min_size:
            raise KernelErr(errno.EINVAL, f"size {user_size} below the minimum {min_size}")
        if user_size > len(mv):
            raise KernelErr(errno.EFAULT, f"size {user_size} exceeds the buffer ({len(mv)} bytes)")
        if user_size >= ksize:
            if user_size > ksize and any(mv[ksize:user_size]):
                raise KernelErr(errno.E2BIG, "non-zero bytes past the kernel's struct")
            cmd, n = kstruct.from_buffer_copy(mv), ksize
        else:
            cmd, n = kstruct.from_buffer_copy(bytes(mv[:user_size]) + bytes(ksize - user_size)), user_size
        try:
            handler(ctx, cmd)
        except KernelErr as e:
            if e.respond:   # the handler responded, then failed (IOAS_IOVA_RANGES' EMSGSIZE)
                mv[:n] = memoryview(cmd).cast("B")[:n]
            raise
        mv[:n] = memoryview(cmd).cast("B")[:n]   # iommufd_ucmd_respond: min(user_size, struct size)
        return 0

    def _iommufd_ioctl_checked(self, ctx: IommufdCtx, request: int, buf) -> int:
        """iommufd_fops_ioctl step by step; ``_iommufd_ioctl`` takes a table of the requests this
        kernel knows and the emulator models (``_iommufd_op_table``) and comes here for the rest."""
        nr = uapi.ioc_nr(request)
        intro = _IOMMUFD_OPS.get(nr)
        kernel = _version(self.profile.kernel)
        if nr < uapi.IOMMUFD_CMD_BASE or nr > uapi.IOMMUFD_CMD_TEST:
            return vfio_compat.vfio_ioctl(ctx, request, buf)   # iommufd_vfio_ioctl
        if intro is None or _version(intro) > kernel:
            raise KernelErr(errno.ENOTTY, "unknown iommufd ioctl for this kernel")
        if request != uapi._IO(uapi.IOMMUFD_TYPE, nr):
            raise KernelErr(errno.ENOTTY, "request number has direction/size bits")   # -ENOIOCTLCMD
        mv = memoryview(buf).cast("B")
        if len(mv) < 4:
            raise KernelErr(errno.EFAULT, "buffer shorter than the size field")
        user_size = int.from_bytes(mv[:4], "little")
        handler, kstruct = self._iommufd_handler(nr)
        first, last_field = _MIN_FIELD_FIRST_VERSION[nr]
        if user_size < uapi.offsetofend(first, last_field):
            raise KernelErr(errno.EINVAL, f"size {user_size} below the minimum {uapi.offsetofend(first, last_field)}")
        if user_size > len(mv):
            raise KernelErr(errno.EFAULT, f"size {user_size} exceeds the buffer ({len(mv)} bytes)")
        ksize = ctypes.sizeof(kstruct)
        if user_size > ksize and any(mv[ksize:user_size]):
            raise KernelErr(errno.E2BIG, "non-zero bytes past the kernel's struct")
        n = min(user_size, ksize)
        cmd = kstruct.from_buffer_copy(bytes(mv[:n]) + bytes(ksize - n))
        try:
            handler(ctx, cmd)
        except KernelErr as e:
            if e.respond:
                mv[:n] = bytes(cmd)[:n]
            raise
        mv[:n] = bytes(cmd)[:n]   # iommufd_ucmd_respond: min(user_size, struct size)
        return 0

    def _iommufd_handler(self, nr: int):
        handler = _iommufd_handlers(self.profile).get(nr)
        if handler is None:
            raise EmulationGap(f"{uapi.request_name(uapi._IO(uapi.IOMMUFD_TYPE, nr))} is not modelled by the emulator")
        return handler

    def _cdev_ioctl(self, f, request: int, buf) -> int:
        """vfio_device_fops_unl_ioctl: BIND first; anything else needs access_granted (EINVAL)."""
        if request != uapi.VFIO_DEVICE_BIND_IOMMUFD and not f.access_granted:
            raise KernelErr(errno.EINVAL, "device not bound (access not granted)")
        op = _CDEV_OPS.get(request)
        if op is None:
            raise KernelErr(errno.ENOTTY, "ioctl not modelled for VFIO devices")
        kstruct, minsz, handler, out = op
        if type(buf) is bytearray and request in _WHOLE_STRUCT and len(buf) >= minsz:
            cmd = kstruct.from_buffer_copy(buf)   # copy_from_user of minsz bytes: the whole struct
            handler(self, f, cmd, minsz)
            if out:   # copy_to_user of just that field
                pack_into, offset, name = _WHOLE_STRUCT[request]
                pack_into(buf, offset, getattr(cmd, name))
            return 0
        mv = memoryview(buf).cast("B")
        if len(mv) < minsz:
            raise KernelErr(errno.EFAULT, f"buffer shorter than minsz {minsz}")
        cmd = kstruct.from_buffer_copy(bytes(mv[:minsz]))
        handler(self, f, cmd, minsz)
        if out:   # copy_to_user of just that field
            start, end = out
            mv[start:end] = memoryview(cmd).cast("B")[start:end]
        return 0

    def _group_ioctl(self, f, request: int, buf) -> int:
        mv = memoryview(buf).cast("B")
        if request == uapi.VFIO_GROUP_SET_CONTAINER:
            vfio.group_set_container(self, f, int.from_bytes(bytes(mv[:4]), "little", signed=True))
            return 0
        if request == uapi.VFIO_GROUP_UNSET_CONTAINER:
            if f.ctx_fd is None:
                raise KernelErr(errno.EINVAL, "no container")
            if any(d.open_via == "group" and d.group == f.group for d in self.devices.values()):
                raise KernelErr(errno.EBUSY, "devices of the group are open")
            ctx, f.ctx_fd = self.ctxs[f.ctx_fd], None
            self.put_ctx(ctx)   # vfio_group_ioctl_unset_container: iommufd_ctx_put
            return 0
        if request == uapi.VFIO_GROUP_GET_DEVICE_FD:
            name = bytes(mv).split(b"\0", 1)[0].decode()
            dev = vfio.group_get_device_fd(self, f, name)
            return self.install_file(vfio.GroupDeviceFile(dev))
        raise KernelErr(errno.ENOTTY, "group ioctl not modelled")

    # -- KVM and DMA -------------------------------------------------------------------
    def kvm_file(self, op: str, fd: int) -> None:
        """KVM_DEV_VFIO_FILE_ADD / _DEL on the VM's kvm-vfio device."""
        if self.kvm is None:
            raise KernelErr(errno.ENODEV, "this system has no VM (set [system] kvm = true)")
        f = self.files.get(fd)
        if f is None:
            raise KernelErr(errno.EBADF, f"fd {fd} is not open")
        (kvmmod.file_add if op == "add" else kvmmod.file_del)(self, self.kvm, f)

    def guest_running(self) -> None:
        if self.kvm is not None:
            self.kvm.sptes_present = True

    def dma(self, name: str, iova: int, length: int, snoop: bool) -> dict:
        """The device does DMA: record whether it was coherent with the CPU caches."""
        dev = self.devices.get(name)
        if dev is None:
            raise KernelErr(errno.ENODEV, f"no device {name}")
        self.guest_running()
        group = self.groups[dev.group]
        if group.domain is None:
            raise KernelErr(errno.EIO, f"{name} is not attached: DMA is blocked")
        dom = group.domain
        target = dom.parent if dom.kind == "nested" else dom
        if target.pte_at(iova) is None or target.pte_at(iova + max(length, 1) - 1) is None:
            raise KernelErr(errno.EFAULT, f"IOMMU fault: {iova:#x} not mapped in {name}'s domain")
        coherent = self.driver.dma_coherent(dom, dev, iova, snoop)
        kvm_handles = self.kvm is not None and self.kvm.wbinvd_emulated
        return {"coherent": coherent, "kvm_flushes": kvm_handles}

    # -- views ---------------------------------------------------------------------------
    def snapshot(self):
        """The whole state as a hashable value (domain serial counters excluded: unobservable)."""
        domains = {}
        for ctx in self.ctxs.values():
            for o in ctx.objects.values():
                if getattr(o, "domain", None) is not None:
                    domains[o.domain.serial] = o.domain.snapshot()
        for g in self.groups.values():
            if g.domain is not None:
                domains[g.domain.serial] = g.domain.snapshot()
        return (tuple(sorted((fd, c.snapshot()) for fd, c in self.ctxs.items())),
                tuple(sorted((fd, f.snapshot() if not isinstance(f, IommufdCtx) else ("iommufd",), f.refs)
                             for fd, f in self.files.items())),
                tuple(d.snapshot() for d in self.devices.values()),
                tuple(g.snapshot() for g in self.groups.values()),
                tuple(sorted(domains.items())),
                self.kvm.snapshot() if self.kvm else None,
                tuple(m.snapshot() for m in self.mock_devs.values()))
