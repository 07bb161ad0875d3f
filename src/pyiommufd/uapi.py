"""The iommufd and VFIO uAPI: ioctl numbers, flags, struct layouts, errno names.

This module is the single source of truth for every number the project sends to a
kernel, real or emulated.  Layouts follow include/uapi/linux/iommufd.h and
include/uapi/linux/vfio.h of Linux 6.12.117 (Debian's linux-source-6.12); the
older layouts of structs that grew are kept beside them, named after the release
that introduced them (read in v6.6.0 and v6.8 of the same headers).

All iommufd commands are ``_IO(';', nr)``: the request number carries no size, the
struct's own leading ``size`` field does (iommufd_fops_ioctl, drivers/iommu/iommufd/main.c).
VFIO cdev commands are ``_IO(';', VFIO_BASE + n)`` and their structs start with ``argsz``.
"""
from __future__ import annotations

import ctypes
import errno as _errno
import struct

u8, u16, u32, s32, u64 = ctypes.c_uint8, ctypes.c_uint16, ctypes.c_uint32, ctypes.c_int32, ctypes.c_uint64

# --- ioctl number encoding (include/uapi/asm-generic/ioctl.h) -------------------
_IOC_NRBITS, _IOC_TYPEBITS, _IOC_SIZEBITS = 8, 8, 14
_IOC_NRSHIFT = 0
_IOC_TYPESHIFT = _IOC_NRSHIFT + _IOC_NRBITS
_IOC_SIZESHIFT = _IOC_TYPESHIFT + _IOC_TYPEBITS
_IOC_DIRSHIFT = _IOC_SIZESHIFT + _IOC_SIZEBITS


def _IOC(direction: int, type_: int, nr: int, size: int) -> int:
    return (direction << _IOC_DIRSHIFT) | (type_ << _IOC_TYPESHIFT) | (nr << _IOC_NRSHIFT) | (size << _IOC_SIZESHIFT)


def _IO(type_: int, nr: int) -> int:
    return _IOC(0, type_, nr, 0)


def ioc_nr(request: int) -> int:
    return (request >> _IOC_NRSHIFT) & ((1 << _IOC_NRBITS) - 1)


def ioc_type(request: int) -> int:
    return (request >> _IOC_TYPESHIFT) & ((1 << _IOC_TYPEBITS) - 1)


IOMMUFD_TYPE = ord(";")
VFIO_TYPE = ord(";")
VFIO_BASE = 100

# --- iommufd commands (enum in iommufd.h, 6.12.117) -----------------------------
IOMMUFD_CMD_BASE = 0x80
IOMMUFD_CMD_DESTROY = 0x80
IOMMUFD_CMD_IOAS_ALLOC = 0x81
IOMMUFD_CMD_IOAS_ALLOW_IOVAS = 0x82
IOMMUFD_CMD_IOAS_COPY = 0x83
IOMMUFD_CMD_IOAS_IOVA_RANGES = 0x84
IOMMUFD_CMD_IOAS_MAP = 0x85
IOMMUFD_CMD_IOAS_UNMAP = 0x86
IOMMUFD_CMD_OPTION = 0x87
IOMMUFD_CMD_VFIO_IOAS = 0x88
IOMMUFD_CMD_HWPT_ALLOC = 0x89
IOMMUFD_CMD_GET_HW_INFO = 0x8A
IOMMUFD_CMD_HWPT_SET_DIRTY_TRACKING = 0x8B
IOMMUFD_CMD_HWPT_GET_DIRTY_BITMAP = 0x8C
IOMMUFD_CMD_HWPT_INVALIDATE = 0x8D
IOMMUFD_CMD_FAULT_QUEUE_ALLOC = 0x8E

IOMMU_DESTROY = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_DESTROY)
IOMMU_IOAS_ALLOC = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_ALLOC)
IOMMU_IOAS_ALLOW_IOVAS = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_ALLOW_IOVAS)
IOMMU_IOAS_COPY = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_COPY)
IOMMU_IOAS_IOVA_RANGES = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_IOVA_RANGES)
IOMMU_IOAS_MAP = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_MAP)
IOMMU_IOAS_UNMAP = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_UNMAP)
IOMMU_OPTION = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_OPTION)
IOMMU_VFIO_IOAS = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_VFIO_IOAS)
IOMMU_HWPT_ALLOC = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_HWPT_ALLOC)
IOMMU_GET_HW_INFO = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_GET_HW_INFO)
IOMMU_HWPT_SET_DIRTY_TRACKING = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_HWPT_SET_DIRTY_TRACKING)
IOMMU_HWPT_GET_DIRTY_BITMAP = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_HWPT_GET_DIRTY_BITMAP)
IOMMU_HWPT_INVALIDATE = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_HWPT_INVALIDATE)
IOMMU_FAULT_QUEUE_ALLOC = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_FAULT_QUEUE_ALLOC)

# --- VFIO (vfio.h) ---------------------------------------------------------------
VFIO_GET_API_VERSION = _IO(VFIO_TYPE, VFIO_BASE + 0)
VFIO_CHECK_EXTENSION = _IO(VFIO_TYPE, VFIO_BASE + 1)
VFIO_GROUP_GET_STATUS = _IO(VFIO_TYPE, VFIO_BASE + 3)
VFIO_GROUP_SET_CONTAINER = _IO(VFIO_TYPE, VFIO_BASE + 4)
VFIO_GROUP_UNSET_CONTAINER = _IO(VFIO_TYPE, VFIO_BASE + 5)
VFIO_GROUP_GET_DEVICE_FD = _IO(VFIO_TYPE, VFIO_BASE + 6)
VFIO_DEVICE_BIND_IOMMUFD = _IO(VFIO_TYPE, VFIO_BASE + 18)
VFIO_DEVICE_ATTACH_IOMMUFD_PT = _IO(VFIO_TYPE, VFIO_BASE + 19)
VFIO_DEVICE_DETACH_IOMMUFD_PT = _IO(VFIO_TYPE, VFIO_BASE + 20)
VFIO_SET_IOMMU = _IO(VFIO_TYPE, VFIO_BASE + 2)
VFIO_IOMMU_GET_INFO = _IO(VFIO_TYPE, VFIO_BASE + 12)
VFIO_IOMMU_MAP_DMA = _IO(VFIO_TYPE, VFIO_BASE + 13)
VFIO_IOMMU_UNMAP_DMA = _IO(VFIO_TYPE, VFIO_BASE + 14)
VFIO_IOMMU_DIRTY_PAGES = _IO(VFIO_TYPE, VFIO_BASE + 17)
VFIO_API_VERSION = 0
# VFIO_CHECK_EXTENSION / VFIO_SET_IOMMU values
VFIO_TYPE1_IOMMU = 1
VFIO_TYPE1v2_IOMMU = 3
VFIO_DMA_CC_IOMMU = 4  # extension: "is DMA through this container cache coherent"
VFIO_TYPE1_NESTING_IOMMU = 6
VFIO_NOIOMMU_IOMMU = 8
VFIO_UNMAP_ALL = 9
VFIO_UPDATE_VADDR = 10
VFIO_DMA_MAP_FLAG_READ = 1 << 0
VFIO_DMA_MAP_FLAG_WRITE = 1 << 1
VFIO_DMA_MAP_FLAG_VADDR = 1 << 2
VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP = 1 << 0
VFIO_DMA_UNMAP_FLAG_ALL = 1 << 1
VFIO_DMA_UNMAP_FLAG_VADDR = 1 << 2
VFIO_IOMMU_INFO_PGSIZES = 1 << 0
VFIO_IOMMU_INFO_CAPS = 1 << 1
VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE = 1
VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL = 3

# --- flags and enums --------------------------------------------------------------
IOMMU_IOAS_MAP_FIXED_IOVA = 1 << 0
IOMMU_IOAS_MAP_WRITEABLE = 1 << 1
IOMMU_IOAS_MAP_READABLE = 1 << 2

IOMMU_HWPT_ALLOC_NEST_PARENT = 1 << 0
IOMMU_HWPT_ALLOC_DIRTY_TRACKING = 1 << 1
IOMMU_HWPT_FAULT_ID_VALID = 1 << 2
# Not Linux: the "want CC" flag proposed in the seed thread (proposal-want-cc profile).
# Bit 31 so it can never collide with a flag Linux assigns next.
IOMMU_HWPT_ALLOC_PROPOSED_WANT_CC = 1 << 31
HWPT_ALLOC_FLAGS = {
    "NEST_PARENT": IOMMU_HWPT_ALLOC_NEST_PARENT,
    "DIRTY_TRACKING": IOMMU_HWPT_ALLOC_DIRTY_TRACKING,
    "FAULT_ID_VALID": IOMMU_HWPT_FAULT_ID_VALID,
}

IOMMU_HWPT_DATA_NONE = 0
IOMMU_HWPT_DATA_VTD_S1 = 1
IOMMU_HW_INFO_TYPE_NONE = 0
IOMMU_HW_INFO_TYPE_INTEL_VTD = 1
IOMMU_HW_CAP_DIRTY_TRACKING = 1 << 0
IOMMU_HWPT_DIRTY_TRACKING_ENABLE = 1 << 0
IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR = 1 << 0   # = IOMMU_DIRTY_NO_CLEAR (include/linux/iommu.h)
IOMMU_HWPT_INVALIDATE_DATA_VTD_S1 = 0
IOMMU_PGFAULT_PERM_READ, IOMMU_PGFAULT_PERM_WRITE, IOMMU_PGFAULT_PERM_EXEC, IOMMU_PGFAULT_PERM_PRIV = 1, 2, 4, 8
IOMMU_PGFAULT_FLAGS_PASID_VALID, IOMMU_PGFAULT_FLAGS_LAST_PAGE = 1 << 0, 1 << 1
IOMMUFD_PAGE_RESP_SUCCESS, IOMMUFD_PAGE_RESP_INVALID = 0, 1

IOMMU_VFIO_IOAS_GET, IOMMU_VFIO_IOAS_SET, IOMMU_VFIO_IOAS_CLEAR = 0, 1, 2

# enum iommufd_option / enum iommufd_option_ops
IOMMU_OPTION_RLIMIT_MODE = 0
IOMMU_OPTION_HUGE_PAGES = 1
IOMMU_OPTION_OP_SET = 0
IOMMU_OPTION_OP_GET = 1

# Intel VT-d extended capability register, bit 7: Snoop Control (ecap_sc_support,
# drivers/iommu/intel/iommu.h).
VTD_ECAP_SC = 1 << 7


# --- structs ----------------------------------------------------------------------
class _Struct(ctypes.Structure):
    """Base: little helpers shared by every uAPI struct."""

    def __repr__(self) -> str:
        fields = ", ".join(f"{n}={getattr(self, n)!r}" for n, *_ in self._fields_ if not n.startswith("__"))
        return f"{type(self).__name__}({fields})"


def offsetofend(cls: type[ctypes.Structure], field: str) -> int:
    """offsetofend() of include/linux/stddef.h."""
    f = getattr(cls, field)
    return f.offset + f.size


_STRUCT_CODES = {u8: "B", u16: "H", u32: "I", s32: "i", u64: "Q"}


class Layout:
    """A uAPI struct as a precompiled ``struct.Struct``, for callers that build and read the
    bytes themselves (the client's hot ioctls): ``pack(*values)`` gives a bytearray of
    ``sizeof(cls)`` bytes with the leading ``size``/``argsz`` set to that size, ``fields`` in
    the order given (struct order) and every other byte zero; ``reader(name)`` reads one field
    back from such a buffer.  Offsets and sizes come from the ctypes class: one layout."""

    __slots__ = ("cls", "size", "names", "_st")

    def __init__(self, cls: type[ctypes.Structure], *fields: str):
        self.cls, self.size, self.names = cls, ctypes.sizeof(cls), fields
        head, head_type = cls._fields_[0]
        if head not in ("size", "argsz") or head_type is not u32:
            raise ValueError(f"{cls.__name__} does not start with a u32 size/argsz")
        fmt, pos = "<I", 4
        for name in fields:
            f, ctype = getattr(cls, name), dict(cls._fields_)[name]
            if f.offset < pos:
                raise ValueError(f"{cls.__name__}.{name}: fields must be given in struct order")
            fmt += f"{f.offset - pos}x" if f.offset > pos else ""
            fmt += _STRUCT_CODES[ctype]
            pos = f.offset + f.size
        fmt += f"{self.size - pos}x" if self.size > pos else ""
        self._st = struct.Struct(fmt)

    def pack(self, *values) -> bytearray:
        try:
            return bytearray(self._st.pack(self.size, *values))
        except struct.error:
            # A value the field cannot hold: do what a ctypes field assignment does (wrap an
            # int to the field's width, TypeError for a non-int), so both builds agree.
            fields = dict(zip(self.names, values))
            fields[self.cls._fields_[0][0]] = self.size
            return bytearray(self.cls(**fields))

    def reader(self, name: str):
        """``read(buf) -> int``: the field ``name`` of a buffer laid out as this struct."""
        f, ctype = getattr(self.cls, name), dict(self.cls._fields_)[name]
        unpack_from, offset = struct.Struct("<" + _STRUCT_CODES[ctype]).unpack_from, f.offset
        return lambda buf: unpack_from(buf, offset)[0]


def field_packer(cls: type[ctypes.Structure], span: tuple[int, int]):
    """(pack_into, offset, name) writing the scalar field of ``cls`` that occupies ``span``
    (start, end) into a buffer: ``pack_into(buf, offset, value)``."""
    for name, ctype in cls._fields_:
        f = getattr(cls, name)
        if (f.offset, f.offset + f.size) == tuple(span):
            return struct.Struct("<" + _STRUCT_CODES[ctype]).pack_into, f.offset, name
    raise ValueError(f"{cls.__name__}: no field at {span}")


class iommu_destroy(_Struct):
    """struct iommu_destroy { __u32 size; __u32 id; };"""
    _fields_ = [("size", u32), ("id", u32)]


class iommu_ioas_alloc(_Struct):
    """struct iommu_ioas_alloc { __u32 size; __u32 flags; __u32 out_ioas_id; };"""
    _fields_ = [("size", u32), ("flags", u32), ("out_ioas_id", u32)]


class iommu_ioas_map(_Struct):
    """struct iommu_ioas_map { __u32 size, flags, ioas_id, __reserved; __aligned_u64 user_va, length, iova; };"""
    _fields_ = [("size", u32), ("flags", u32), ("ioas_id", u32), ("__reserved", u32),
                ("user_va", u64), ("length", u64), ("iova", u64)]


class iommu_ioas_unmap(_Struct):
    """struct iommu_ioas_unmap { __u32 size, ioas_id; __aligned_u64 iova, length; };"""
    _fields_ = [("size", u32), ("ioas_id", u32), ("iova", u64), ("length", u64)]


class iommu_iova_range(_Struct):
    """struct iommu_iova_range { __aligned_u64 start; __aligned_u64 last; };"""
    _fields_ = [("start", u64), ("last", u64)]


class iommu_ioas_iova_ranges(_Struct):
    """struct iommu_ioas_iova_ranges { __u32 size, ioas_id, num_iovas, __reserved;
    __aligned_u64 allowed_iovas, out_iova_alignment; };"""
    _fields_ = [("size", u32), ("ioas_id", u32), ("num_iovas", u32), ("__reserved", u32),
                ("allowed_iovas", u64), ("out_iova_alignment", u64)]


class iommu_ioas_allow_iovas(_Struct):
    """struct iommu_ioas_allow_iovas { __u32 size, ioas_id, num_iovas, __reserved; __aligned_u64 allowed_iovas; };"""
    _fields_ = [("size", u32), ("ioas_id", u32), ("num_iovas", u32), ("__reserved", u32),
                ("allowed_iovas", u64)]


class iommu_ioas_copy(_Struct):
    """struct iommu_ioas_copy { __u32 size, flags, dst_ioas_id, src_ioas_id;
    __aligned_u64 length, dst_iova, src_iova; };"""
    _fields_ = [("size", u32), ("flags", u32), ("dst_ioas_id", u32), ("src_ioas_id", u32),
                ("length", u64), ("dst_iova", u64), ("src_iova", u64)]


class iommu_option(_Struct):
    """struct iommu_option { __u32 size, option_id; __u16 op, __reserved; __u32 object_id; __aligned_u64 val64; };"""
    _fields_ = [("size", u32), ("option_id", u32), ("op", u16), ("__reserved", u16), ("object_id", u32),
                ("val64", u64)]


class iommu_vfio_ioas(_Struct):
    """struct iommu_vfio_ioas { __u32 size; __u32 ioas_id; __u16 op; __u16 __reserved; };"""
    _fields_ = [("size", u32), ("ioas_id", u32), ("op", u16), ("__reserved", u16)]


class iommu_hwpt_alloc_v6_6(_Struct):
    """struct iommu_hwpt_alloc as introduced in v6.6:
    { __u32 size, flags, dev_id, pt_id, out_hwpt_id, __reserved; }"""
    _fields_ = [("size", u32), ("flags", u32), ("dev_id", u32), ("pt_id", u32),
                ("out_hwpt_id", u32), ("__reserved", u32)]


class iommu_hwpt_alloc_v6_8(_Struct):
    """v6.7/v6.8 added { __u32 data_type, data_len; __aligned_u64 data_uptr; }."""
    _fields_ = iommu_hwpt_alloc_v6_6._fields_ + [("data_type", u32), ("data_len", u32), ("data_uptr", u64)]


class iommu_hwpt_alloc(_Struct):
    """struct iommu_hwpt_alloc, 6.12: v6.8's plus { __u32 fault_id; __u32 __reserved2; } (v6.11)."""
    _fields_ = iommu_hwpt_alloc_v6_8._fields_ + [("fault_id", u32), ("__reserved2", u32)]


class iommu_hw_info_v6_6(_Struct):
    """struct iommu_hw_info as introduced in v6.6:
    { __u32 size, flags, dev_id, data_len; __aligned_u64 data_uptr; __u32 out_data_type, __reserved; }"""
    _fields_ = [("size", u32), ("flags", u32), ("dev_id", u32), ("data_len", u32), ("data_uptr", u64),
                ("out_data_type", u32), ("__reserved", u32)]


class iommu_hw_info_v6_8(_Struct):
    """v6.8 added __aligned_u64 out_capabilities."""
    _fields_ = iommu_hw_info_v6_6._fields_ + [("out_capabilities", u64)]


class iommu_hw_info(_Struct):
    """struct iommu_hw_info, 6.12.117: __reserved split into
    { __u8 out_max_pasid_log2; __u8 __reserved[3]; } (backport of the PASID capability report)."""
    _fields_ = [("size", u32), ("flags", u32), ("dev_id", u32), ("data_len", u32), ("data_uptr", u64),
                ("out_data_type", u32), ("out_max_pasid_log2", u8), ("__reserved", u8 * 3),
                ("out_capabilities", u64)]


class iommu_hw_info_vtd(_Struct):
    """struct iommu_hw_info_vtd { __u32 flags, __reserved; __aligned_u64 cap_reg, ecap_reg; };"""
    _fields_ = [("flags", u32), ("__reserved", u32), ("cap_reg", u64), ("ecap_reg", u64)]


class iommu_hwpt_vtd_s1(_Struct):
    """struct iommu_hwpt_vtd_s1 { __aligned_u64 flags, pgtbl_addr; __u32 addr_width, __reserved; };"""
    _fields_ = [("flags", u64), ("pgtbl_addr", u64), ("addr_width", u32), ("__reserved", u32)]


class vfio_device_bind_iommufd(_Struct):
    """struct vfio_device_bind_iommufd { __u32 argsz, flags; __s32 iommufd; __u32 out_devid; };"""
    _fields_ = [("argsz", u32), ("flags", u32), ("iommufd", s32), ("out_devid", u32)]


class vfio_device_attach_iommufd_pt(_Struct):
    """struct vfio_device_attach_iommufd_pt { __u32 argsz, flags, pt_id; };"""
    _fields_ = [("argsz", u32), ("flags", u32), ("pt_id", u32)]


class vfio_device_detach_iommufd_pt(_Struct):
    """struct vfio_device_detach_iommufd_pt { __u32 argsz, flags; };"""
    _fields_ = [("argsz", u32), ("flags", u32)]


class vfio_iommu_type1_info(_Struct):
    """struct vfio_iommu_type1_info { __u32 argsz, flags; __aligned_u64 iova_pgsizes; __u32 cap_offset, pad; };"""
    _fields_ = [("argsz", u32), ("flags", u32), ("iova_pgsizes", u64), ("cap_offset", u32), ("pad", u32)]


class vfio_info_cap_header(_Struct):
    """struct vfio_info_cap_header { __u16 id, version; __u32 next; };"""
    _fields_ = [("id", u16), ("version", u16), ("next", u32)]


class vfio_iova_range(_Struct):
    """struct vfio_iova_range { __u64 start, end; };"""
    _fields_ = [("start", u64), ("end", u64)]


class vfio_iommu_type1_info_cap_iova_range(_Struct):
    """struct vfio_iommu_type1_info_cap_iova_range { struct vfio_info_cap_header header; __u32 nr_iovas, reserved;
    struct vfio_iova_range iova_ranges[]; };  (the flexible array follows the 16-byte head)"""
    _fields_ = [("header", vfio_info_cap_header), ("nr_iovas", u32), ("reserved", u32)]


class vfio_iommu_type1_info_dma_avail(_Struct):
    """struct vfio_iommu_type1_info_dma_avail { struct vfio_info_cap_header header; __u32 avail; };"""
    _fields_ = [("header", vfio_info_cap_header), ("avail", u32)]


class vfio_iommu_type1_dma_map(_Struct):
    """struct vfio_iommu_type1_dma_map { __u32 argsz, flags; __u64 vaddr, iova, size; };"""
    _fields_ = [("argsz", u32), ("flags", u32), ("vaddr", u64), ("iova", u64), ("size", u64)]


class vfio_iommu_type1_dma_unmap(_Struct):
    """struct vfio_iommu_type1_dma_unmap { __u32 argsz, flags; __u64 iova, size; __u8 data[]; };"""
    _fields_ = [("argsz", u32), ("flags", u32), ("iova", u64), ("size", u64)]


class vfio_group_fd(_Struct):
    """The __s32 container fd VFIO_GROUP_SET_CONTAINER reads."""
    _fields_ = [("fd", s32)]


class iommu_hwpt_set_dirty_tracking(_Struct):
    """struct iommu_hwpt_set_dirty_tracking { __u32 size, flags, hwpt_id, __reserved; };"""
    _fields_ = [("size", u32), ("flags", u32), ("hwpt_id", u32), ("__reserved", u32)]


class iommu_hwpt_get_dirty_bitmap(_Struct):
    """struct iommu_hwpt_get_dirty_bitmap { __u32 size, hwpt_id, flags, __reserved;
    __aligned_u64 iova, length, page_size, data; };"""
    _fields_ = [("size", u32), ("hwpt_id", u32), ("flags", u32), ("__reserved", u32),
                ("iova", u64), ("length", u64), ("page_size", u64), ("data", u64)]


class iommu_hwpt_invalidate(_Struct):
    """struct iommu_hwpt_invalidate { __u32 size, hwpt_id; __aligned_u64 data_uptr;
    __u32 data_type, entry_len, entry_num, __reserved; };"""
    _fields_ = [("size", u32), ("hwpt_id", u32), ("data_uptr", u64), ("data_type", u32),
                ("entry_len", u32), ("entry_num", u32), ("__reserved", u32)]


class iommu_fault_alloc(_Struct):
    """struct iommu_fault_alloc { __u32 size, flags, out_fault_id, out_fault_fd; };"""
    _fields_ = [("size", u32), ("flags", u32), ("out_fault_id", u32), ("out_fault_fd", u32)]


class iommu_hwpt_pgfault(_Struct):
    """struct iommu_hwpt_pgfault { __u32 flags, dev_id, pasid, grpid, perm, __reserved;
    __aligned_u64 addr; __u32 length, cookie; };"""
    _fields_ = [("flags", u32), ("dev_id", u32), ("pasid", u32), ("grpid", u32), ("perm", u32),
                ("__reserved", u32), ("addr", u64), ("length", u32), ("cookie", u32)]


class iommu_hwpt_page_response(_Struct):
    """struct iommu_hwpt_page_response { __u32 cookie, code; };"""
    _fields_ = [("cookie", u32), ("code", u32)]


# --- the selftest mock's uAPI (drivers/iommu/iommufd/iommufd_test.h, 6.12.117) -----
# Present with CONFIG_IOMMUFD_TEST, which every conformance kernel has.
IOMMUFD_CMD_TEST = IOMMUFD_CMD_BASE + 32
IOMMU_TEST_CMD = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_TEST)
(IOMMU_TEST_OP_ADD_RESERVED, IOMMU_TEST_OP_MOCK_DOMAIN, IOMMU_TEST_OP_MD_CHECK_MAP, IOMMU_TEST_OP_MD_CHECK_REFS,
 IOMMU_TEST_OP_CREATE_ACCESS, IOMMU_TEST_OP_DESTROY_ACCESS_PAGES, IOMMU_TEST_OP_ACCESS_PAGES,
 IOMMU_TEST_OP_ACCESS_RW, IOMMU_TEST_OP_SET_TEMP_MEMORY_LIMIT, IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE,
 IOMMU_TEST_OP_ACCESS_REPLACE_IOAS, IOMMU_TEST_OP_MOCK_DOMAIN_FLAGS, IOMMU_TEST_OP_DIRTY,
 IOMMU_TEST_OP_MD_CHECK_IOTLB, IOMMU_TEST_OP_TRIGGER_IOPF) = range(1, 16)
MOCK_APERTURE_START = 1 << 24
MOCK_APERTURE_LAST = (1 << 31) - 1
MOCK_FLAGS_ACCESS_WRITE = 1 << 0
MOCK_FLAGS_ACCESS_SYZ = 1 << 16
MOCK_ACCESS_RW_WRITE = 1 << 0
MOCK_ACCESS_RW_SLOW_PATH = 1 << 2
MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES = 1 << 0
MOCK_FLAGS_DEVICE_NO_DIRTY = 1 << 0
MOCK_FLAGS_DEVICE_HUGE_IOVA = 1 << 1
MOCK_NESTED_DOMAIN_IOTLB_ID_MAX = 3
MOCK_NESTED_DOMAIN_IOTLB_NUM = 4
IOMMU_HW_INFO_TYPE_SELFTEST = 0xFEEDBEEF
IOMMU_HW_INFO_SELFTEST_REGVAL = 0xDEADBEEF
IOMMU_HWPT_DATA_SELFTEST = 0xDEAD
IOMMU_TEST_IOTLB_DEFAULT = 0xBADBEEF
IOMMU_HWPT_INVALIDATE_DATA_SELFTEST = 0xDEADBEEF
IOMMU_HWPT_INVALIDATE_DATA_SELFTEST_INVALID = 0xDADBEEF
IOMMU_TEST_INVALIDATE_FLAG_ALL = 1 << 0


class _test_add_reserved(_Struct):
    _fields_ = [("start", u64), ("length", u64)]


class _test_mock_domain(_Struct):
    _fields_ = [("out_stdev_id", u32), ("out_hwpt_id", u32), ("out_idev_id", u32)]


class _test_mock_domain_flags(_Struct):
    _fields_ = [("out_stdev_id", u32), ("out_hwpt_id", u32), ("out_idev_id", u32), ("dev_flags", u32)]


class _test_mock_domain_replace(_Struct):
    _fields_ = [("pt_id", u32)]


class _test_check_map(_Struct):
    _fields_ = [("iova", u64), ("length", u64), ("uptr", u64)]


class _test_check_refs(_Struct):
    _fields_ = [("length", u64), ("uptr", u64), ("refs", u32)]


class _test_create_access(_Struct):
    _fields_ = [("out_access_fd", u32), ("flags", u32)]


class _test_destroy_access_pages(_Struct):
    _fields_ = [("access_pages_id", u32)]


class _test_access_pages(_Struct):
    _fields_ = [("flags", u32), ("out_access_pages_id", u32), ("iova", u64), ("length", u64), ("uptr", u64)]


class _test_access_rw(_Struct):
    _fields_ = [("iova", u64), ("length", u64), ("uptr", u64), ("flags", u32)]


class _test_memory_limit(_Struct):
    _fields_ = [("limit", u32)]


class _test_access_replace_ioas(_Struct):
    _fields_ = [("ioas_id", u32)]


class _test_dirty(_Struct):
    _fields_ = [("flags", u32), ("iova", u64), ("length", u64), ("page_size", u64), ("uptr", u64),
                ("out_nr_dirty", u64)]


class _test_check_iotlb(_Struct):
    _fields_ = [("id", u32), ("iotlb", u32)]


class _test_trigger_iopf(_Struct):
    _fields_ = [("dev_id", u32), ("pasid", u32), ("grpid", u32), ("perm", u32), ("addr", u64)]


class _iommu_test_cmd_union(ctypes.Union):
    _fields_ = [("add_reserved", _test_add_reserved), ("mock_domain", _test_mock_domain),
                ("mock_domain_flags", _test_mock_domain_flags), ("mock_domain_replace", _test_mock_domain_replace),
                ("check_map", _test_check_map), ("check_refs", _test_check_refs),
                ("create_access", _test_create_access), ("destroy_access_pages", _test_destroy_access_pages),
                ("access_pages", _test_access_pages), ("access_rw", _test_access_rw),
                ("memory_limit", _test_memory_limit), ("access_replace_ioas", _test_access_replace_ioas),
                ("dirty", _test_dirty), ("check_iotlb", _test_check_iotlb), ("trigger_iopf", _test_trigger_iopf)]


class iommu_test_cmd(_Struct):
    """struct iommu_test_cmd { __u32 size, op, id, __reserved; union { struct {...} add_reserved;
    mock_domain; mock_domain_flags; mock_domain_replace; check_map; check_refs; create_access;
    destroy_access_pages; access_pages; access_rw; memory_limit; access_replace_ioas; dirty;
    check_iotlb; trigger_iopf; }; __u32 last; };  (iommufd_test.h, 6.12.117: 72 bytes, min_size 68)
    The union members are reached by name: ``cmd.mock_domain.out_hwpt_id``."""
    _anonymous_ = ("u",)
    _fields_ = [("size", u32), ("op", u32), ("id", u32), ("__reserved", u32), ("u", _iommu_test_cmd_union),
                ("last", u32)]


class iommu_test_hw_info(_Struct):
    """struct iommu_test_hw_info { __u32 flags, test_reg; };"""
    _fields_ = [("flags", u32), ("test_reg", u32)]


class iommu_hwpt_selftest(_Struct):
    """struct iommu_hwpt_selftest { __u32 iotlb; };"""
    _fields_ = [("iotlb", u32)]


class iommu_hwpt_invalidate_selftest(_Struct):
    """struct iommu_hwpt_invalidate_selftest { __u32 flags, iotlb_id; };"""
    _fields_ = [("flags", u32), ("iotlb_id", u32)]


# The kernel's per-command table: (struct, field whose end is min_size), as in
# iommufd_ioctl_ops[] (IOCTL_OP in drivers/iommu/iommufd/main.c, 6.12.117).
IOMMUFD_MIN_FIELD = {
    IOMMUFD_CMD_DESTROY: (iommu_destroy, "id"),
    IOMMUFD_CMD_IOAS_ALLOC: (iommu_ioas_alloc, "out_ioas_id"),
    IOMMUFD_CMD_IOAS_MAP: (iommu_ioas_map, "iova"),
    IOMMUFD_CMD_IOAS_UNMAP: (iommu_ioas_unmap, "length"),
    IOMMUFD_CMD_IOAS_IOVA_RANGES: (iommu_ioas_iova_ranges, "out_iova_alignment"),
    IOMMUFD_CMD_IOAS_ALLOW_IOVAS: (iommu_ioas_allow_iovas, "allowed_iovas"),
    IOMMUFD_CMD_IOAS_COPY: (iommu_ioas_copy, "src_iova"),
    IOMMUFD_CMD_OPTION: (iommu_option, "val64"),
    IOMMUFD_CMD_VFIO_IOAS: (iommu_vfio_ioas, "__reserved"),
    IOMMUFD_CMD_HWPT_ALLOC: (iommu_hwpt_alloc, "__reserved"),
    IOMMUFD_CMD_GET_HW_INFO: (iommu_hw_info, "__reserved"),
    IOMMUFD_CMD_HWPT_SET_DIRTY_TRACKING: (iommu_hwpt_set_dirty_tracking, "__reserved"),
    IOMMUFD_CMD_HWPT_GET_DIRTY_BITMAP: (iommu_hwpt_get_dirty_bitmap, "data"),
    IOMMUFD_CMD_HWPT_INVALIDATE: (iommu_hwpt_invalidate, "__reserved"),
    IOMMUFD_CMD_FAULT_QUEUE_ALLOC: (iommu_fault_alloc, "out_fault_fd"),
    IOMMUFD_CMD_TEST: (iommu_test_cmd, "last"),
}

# Per release layouts of the structs that grew.  Key: the struct's layout name as
# profiles name it.
HWPT_ALLOC_LAYOUTS = {"6.6": iommu_hwpt_alloc_v6_6, "6.8": iommu_hwpt_alloc_v6_8, "6.12": iommu_hwpt_alloc}
HW_INFO_LAYOUTS = {"6.6": iommu_hw_info_v6_6, "6.8": iommu_hw_info_v6_8, "6.12": iommu_hw_info}

# --- errno names ------------------------------------------------------------------
# Python names errno 95 ENOTSUP; the kernel source spells it EOPNOTSUPP (same number on Linux).
_KERNEL_NAME_OVERRIDES = {_errno.EOPNOTSUPP: "EOPNOTSUPP", _errno.EAGAIN: "EAGAIN", _errno.EDEADLK: "EDEADLK"}


def errno_name(num: int) -> str:
    """The kernel's symbolic name of an errno value ("EOPNOTSUPP", not "ENOTSUP")."""
    return _KERNEL_NAME_OVERRIDES.get(num) or _errno.errorcode.get(num, f"E{num}")


def errno_value(name: str) -> int:
    """Inverse of errno_name; raises KeyError for an unknown name."""
    if name == "EOPNOTSUPP":
        return _errno.EOPNOTSUPP
    value = getattr(_errno, name, None)
    if not isinstance(value, int):
        raise KeyError(name)
    return value


REQUEST_NAMES = {v: k for k, v in list(globals().items())
                 if (k.startswith("IOMMU_") or k.startswith("VFIO_")) and isinstance(v, int)
                 and k.isupper() and v >= 0x3B00 and ioc_type(v) == IOMMUFD_TYPE and v < 0x3C00}


def request_name(request: int) -> str:
    return REQUEST_NAMES.get(request, f"ioctl {request:#x}")
