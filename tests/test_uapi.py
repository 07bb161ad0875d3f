"""Golden values: every request number and struct size, from include/uapi/linux/{iommufd,vfio}.h (6.12.117)."""
import ctypes
import errno

import pytest

from pyiommufd import uapi

REQUESTS = {
    "IOMMU_DESTROY": 0x3B80, "IOMMU_IOAS_ALLOC": 0x3B81, "IOMMU_IOAS_ALLOW_IOVAS": 0x3B82,
    "IOMMU_IOAS_COPY": 0x3B83, "IOMMU_IOAS_IOVA_RANGES": 0x3B84, "IOMMU_IOAS_MAP": 0x3B85,
    "IOMMU_IOAS_UNMAP": 0x3B86, "IOMMU_OPTION": 0x3B87, "IOMMU_VFIO_IOAS": 0x3B88, "IOMMU_HWPT_ALLOC": 0x3B89,
    "IOMMU_GET_HW_INFO": 0x3B8A, "IOMMU_HWPT_SET_DIRTY_TRACKING": 0x3B8B, "IOMMU_HWPT_GET_DIRTY_BITMAP": 0x3B8C,
    "IOMMU_HWPT_INVALIDATE": 0x3B8D, "IOMMU_FAULT_QUEUE_ALLOC": 0x3B8E,
    "VFIO_GET_API_VERSION": 0x3B64, "VFIO_CHECK_EXTENSION": 0x3B65, "VFIO_GROUP_SET_CONTAINER": 0x3B68,
    "VFIO_GROUP_GET_DEVICE_FD": 0x3B6A, "VFIO_DEVICE_BIND_IOMMUFD": 0x3B76,
    "VFIO_DEVICE_ATTACH_IOMMUFD_PT": 0x3B77, "VFIO_DEVICE_DETACH_IOMMUFD_PT": 0x3B78,
    "IOMMU_TEST_CMD": 0x3BA0,
}

SIZES = {  # sizeof, and offsetofend of the field IOCTL_OP names (the kernel's min_size)
    "iommu_destroy": (8, "id", 8), "iommu_ioas_alloc": (12, "out_ioas_id", 12),
    "iommu_ioas_map": (40, "iova", 40), "iommu_ioas_unmap": (24, "length", 24),
    "iommu_vfio_ioas": (12, "__reserved", 12), "iommu_hwpt_alloc_v6_6": (24, "__reserved", 24),
    "iommu_hwpt_alloc_v6_8": (40, "__reserved", 24), "iommu_hwpt_alloc": (48, "__reserved", 24),
    "iommu_hw_info_v6_6": (32, "__reserved", 32), "iommu_hw_info_v6_8": (40, "__reserved", 32),
    "iommu_hw_info": (40, "__reserved", 32), "iommu_hw_info_vtd": (24, "ecap_reg", 24),
    "vfio_device_bind_iommufd": (16, "out_devid", 16), "vfio_device_attach_iommufd_pt": (12, "pt_id", 12),
    "vfio_device_detach_iommufd_pt": (8, "flags", 8), "iommu_hwpt_vtd_s1": (24, "__reserved", 24),
    # measured with gcc against the tree's iommufd.h / iommufd_test.h (6.12.117)
    "iommu_test_cmd": (72, "last", 68), "iommu_test_hw_info": (8, "test_reg", 8),
    "iommu_hwpt_selftest": (4, "iotlb", 4), "iommu_hwpt_invalidate_selftest": (8, "iotlb_id", 8),
    "iommu_hwpt_set_dirty_tracking": (16, "__reserved", 16), "iommu_hwpt_get_dirty_bitmap": (48, "data", 48),
    "iommu_hwpt_invalidate": (32, "__reserved", 32), "iommu_fault_alloc": (16, "out_fault_fd", 16),
    "iommu_hwpt_pgfault": (40, "cookie", 40), "iommu_hwpt_page_response": (8, "code", 8),
}


@pytest.mark.parametrize("name,value", REQUESTS.items())
def test_request_numbers(name, value):
    assert getattr(uapi, name) == value


@pytest.mark.parametrize("name,spec", SIZES.items())
def test_struct_sizes(name, spec):
    size, field, minsz = spec
    cls = getattr(uapi, name)
    assert ctypes.sizeof(cls) == size
    assert uapi.offsetofend(cls, field) == minsz


def test_field_offsets_of_grown_structs():
    assert uapi.iommu_hwpt_alloc.data_uptr.offset == 32
    assert uapi.iommu_hwpt_alloc.fault_id.offset == 40
    assert uapi.iommu_hw_info.out_max_pasid_log2.offset == 28
    assert uapi.iommu_hw_info.out_capabilities.offset == 32
    assert uapi.iommu_ioas_map.user_va.offset == 16


def test_flags():
    assert (uapi.IOMMU_IOAS_MAP_FIXED_IOVA, uapi.IOMMU_IOAS_MAP_WRITEABLE, uapi.IOMMU_IOAS_MAP_READABLE) == (1, 2, 4)
    assert (uapi.IOMMU_HWPT_ALLOC_NEST_PARENT, uapi.IOMMU_HWPT_ALLOC_DIRTY_TRACKING,
            uapi.IOMMU_HWPT_FAULT_ID_VALID) == (1, 2, 4)
    assert uapi.VTD_ECAP_SC == 0x80 and 0xF00FCA & uapi.VTD_ECAP_SC and not 0xF00F4A & uapi.VTD_ECAP_SC


def test_errno_names_are_the_kernels():
    assert uapi.errno_name(errno.EOPNOTSUPP) == "EOPNOTSUPP"
    assert uapi.errno_value("EOPNOTSUPP") == errno.EOPNOTSUPP
    assert uapi.errno_name(errno.EINVAL) == "EINVAL"
    with pytest.raises(KeyError):
        uapi.errno_value("ENOTANERRNO")


def test_request_names():
    assert uapi.request_name(uapi.IOMMU_HWPT_ALLOC) == "IOMMU_HWPT_ALLOC"
    assert uapi.request_name(0x1234) == "ioctl 0x1234"


def test_iommu_test_cmd_union_offsets():
    """offsetof(struct iommu_test_cmd, dirty.out_nr_dirty) and (trigger_iopf.addr), from gcc."""
    c, un = uapi.iommu_test_cmd, uapi._iommu_test_cmd_union
    assert c.u.offset + un.dirty.offset + uapi._test_dirty.out_nr_dirty.offset == 56
    assert c.u.offset + un.trigger_iopf.offset + uapi._test_trigger_iopf.addr.offset == 32


# -- uapi.Layout: the client's struct.Struct builds agree byte for byte with the ctypes structs --
def _client_layouts():
    from pyiommufd import client
    return {n: v for n, v in vars(client).items() if isinstance(v, uapi.Layout)}


def test_client_layouts_pack_as_ctypes_does():
    layouts = _client_layouts()
    assert {"_MAP", "_UNMAP", "_HWPT_ALLOC", "_ATTACH", "_BIND", "_DETACH", "_DESTROY", "_IOAS_ALLOC"} <= set(layouts)
    for name, lay in layouts.items():
        values = [0x10 + i for i in range(len(lay.names))]
        head = lay.cls._fields_[0][0]
        want = bytes(lay.cls(**dict(zip(lay.names, values)), **{head: ctypes.sizeof(lay.cls)}))
        assert bytes(lay.pack(*values)) == want, name
        for field, value in zip(lay.names, values):
            assert lay.reader(field)(bytearray(want)) == value, (name, field)


def test_layout_wraps_and_refuses_as_a_ctypes_field_does():
    lay = uapi.Layout(uapi.iommu_ioas_map, "flags", "ioas_id", "user_va", "length", "iova")
    wrapped = lay.pack(1 << 32 | 7, -1, -1, 1 << 64 | 3, 0)
    assert bytes(wrapped) == bytes(uapi.iommu_ioas_map(size=40, flags=1 << 32 | 7, ioas_id=-1, user_va=-1,
                                                       length=1 << 64 | 3))
    assert lay.reader("flags")(wrapped) == 7 and lay.reader("length")(wrapped) == 3
    with pytest.raises(TypeError):
        lay.pack(0, 1, 2, 1.5, 0)
    bind = uapi.Layout(uapi.vfio_device_bind_iommufd, "iommufd")
    assert bind.reader("iommufd")(bind.pack(-3)) == -3   # __s32


def test_layout_refuses_fields_out_of_order_or_a_struct_without_size():
    with pytest.raises(ValueError):
        uapi.Layout(uapi.iommu_ioas_map, "iova", "flags")
    with pytest.raises(ValueError):
        uapi.Layout(uapi.iommu_iova_range, "start")


def test_field_packer_writes_the_field_at_its_offset():
    pack_into, offset, name = uapi.field_packer(uapi.vfio_device_bind_iommufd, (12, 16))
    buf = bytearray(16)
    pack_into(buf, offset, 0x1234)
    assert name == "out_devid" and uapi.vfio_device_bind_iommufd.from_buffer_copy(buf).out_devid == 0x1234
    with pytest.raises(ValueError):
        uapi.field_packer(uapi.vfio_device_bind_iommufd, (10, 16))
