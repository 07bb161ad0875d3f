"""IOAS and pages as the kernel's iommufd selftest exercises them (6.12.117: io_pagetable.c,
pages.c, ioas.c, the access half of device.c, vfio_compat.c, selftest.c's access ops), driven
in-process through Host.ioctl with the uAPI structs, as the selftest drives the kernel."""
import copy
import ctypes
import errno

import pytest

from pyiommufd import uapi
from pyiommufd.kernel.err import KernelErr
from pyiommufd.kernel.host import ARG_IS_VALUE, ARGSZ_MINSZ, Host, UserMemory
from pyiommufd.profiles import PROFILES
from pyiommufd.system import System, Unit

PAGE = 4096
MOCK_PAGE = PAGE // 2
APERTURE = uapi.MOCK_APERTURE_START
SIZE_MAX = (1 << 64) - 1
BUFFER_SIZE = 16 * PAGE


class Proc:
    """A process's memory as ``pyiommufd emulate`` presents it to the model: read / write /
    probe, an identity (``mm_key``) and ``alive`` (False once the process has exited)."""

    def __init__(self, key):
        self.mem = UserMemory()
        self.mm_key = key
        self.alive = True

    def mmap(self, n):
        return self.mem.mmap(n)

    def read(self, addr, n):
        return self.mem.read(addr, n)

    def write(self, addr, data):
        self.mem.write(addr, data)

    def probe(self, addr, n):
        self.mem.probe(addr, n)


class St:
    """One /dev/iommu fd on an emulated machine with the selftest mock: what the selftest's
    helpers (iommufd_utils.h) do, each raising KernelErr on failure."""

    def __init__(self, thp=True, host=None):
        self.h = host or Host(System(iommu="mock", units=(Unit("mock0"),)), PROFILES["linux-6.12"])
        self.h.thp = thp
        self.fd = self.h.open("/dev/iommu")
        self.buffer = self.h.mem.mmap(BUFFER_SIZE)

    def ioctl(self, req, s):
        return self.h.ioctl(self.fd, req, s)

    def err(self, req, s):
        try:
            self.ioctl(req, s)
        except KernelErr as e:
            return e.errno
        return 0

    def test_cmd(self, op, id=0, **union):
        cmd = uapi.iommu_test_cmd(size=ctypes.sizeof(uapi.iommu_test_cmd), op=op, id=id)
        for member, fields in union.items():
            for k, v in fields.items():
                setattr(getattr(cmd, member), k, v)
        return cmd

    def ioas_alloc(self):
        a = uapi.iommu_ioas_alloc(size=12)
        self.ioctl(uapi.IOMMU_IOAS_ALLOC, a)
        return a.out_ioas_id

    def mock_domain(self, ioas):
        c = self.test_cmd(uapi.IOMMU_TEST_OP_MOCK_DOMAIN, ioas)
        self.ioctl(uapi.IOMMU_TEST_CMD, c)
        return c.mock_domain.out_stdev_id, c.mock_domain.out_hwpt_id

    def map_cmd(self, ioas, uptr, length, iova=None, flags=6):
        return uapi.iommu_ioas_map(size=40, ioas_id=ioas, user_va=uptr, length=length, iova=iova or 0,
                                   flags=flags | (uapi.IOMMU_IOAS_MAP_FIXED_IOVA if iova is not None else 0))

    def map(self, ioas, uptr, length, iova=None, flags=6):
        m = self.map_cmd(ioas, uptr, length, iova, flags)
        self.ioctl(uapi.IOMMU_IOAS_MAP, m)
        return m.iova

    def unmap(self, ioas, iova, length):
        u = uapi.iommu_ioas_unmap(size=24, ioas_id=ioas, iova=iova, length=length)
        self.ioctl(uapi.IOMMU_IOAS_UNMAP, u)
        return u.length

    def add_reserved(self, ioas, start, length):
        return self.err(uapi.IOMMU_TEST_CMD, self.test_cmd(uapi.IOMMU_TEST_OP_ADD_RESERVED, ioas,
                                                           add_reserved=dict(start=start, length=length)))

    def refs(self, uptr, length, refs):
        return self.err(uapi.IOMMU_TEST_CMD, self.test_cmd(uapi.IOMMU_TEST_OP_MD_CHECK_REFS,
                                                           check_refs=dict(length=length, uptr=uptr, refs=refs)))

    def create_access(self, ioas, flags=uapi.MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES):
        c = self.test_cmd(uapi.IOMMU_TEST_OP_CREATE_ACCESS, ioas, create_access=dict(flags=flags))
        self.ioctl(uapi.IOMMU_TEST_CMD, c)
        return c.create_access.out_access_fd

    def access_pages(self, afd, iova, length, uptr=0, flags=0):
        c = self.test_cmd(uapi.IOMMU_TEST_OP_ACCESS_PAGES, afd,
                          access_pages=dict(iova=iova, length=length, uptr=uptr, flags=flags))
        self.ioctl(uapi.IOMMU_TEST_CMD, c)
        return c.access_pages.out_access_pages_id

    def destroy_access_pages(self, afd, item):
        return self.err(uapi.IOMMU_TEST_CMD, self.test_cmd(uapi.IOMMU_TEST_OP_DESTROY_ACCESS_PAGES, afd,
                                                           destroy_access_pages=dict(access_pages_id=item)))

    def access_rw(self, afd, iova, uptr, length, flags=0):
        return self.err(uapi.IOMMU_TEST_CMD, self.test_cmd(uapi.IOMMU_TEST_OP_ACCESS_RW, afd,
                                                           access_rw=dict(iova=iova, length=length, uptr=uptr,
                                                                          flags=flags)))

    def iova_ranges(self, ioas, num, arr=None):
        arr = arr or self.h.mem.mmap(16 * max(num, 1))
        q = uapi.iommu_ioas_iova_ranges(size=32, ioas_id=ioas, num_iovas=num, allowed_iovas=arr)
        rc = self.err(uapi.IOMMU_IOAS_IOVA_RANGES, q)
        got = [(r.start, r.last) for r in (uapi.iommu_iova_range.from_buffer_copy(self.h.mem.read(arr + 16 * i, 16))
                                           for i in range(min(num, q.num_iovas)))]
        return rc, q.num_iovas, q.out_iova_alignment, got

    def allow(self, ioas, ranges):
        arr = self.h.mem.mmap(16 * max(len(ranges), 1))
        for i, (s, l) in enumerate(ranges):
            self.h.mem.write(arr + 16 * i, bytes(uapi.iommu_iova_range(s, l)))
        return self.err(uapi.IOMMU_IOAS_ALLOW_IOVAS, uapi.iommu_ioas_allow_iovas(
            size=24, ioas_id=ioas, num_iovas=len(ranges), allowed_iovas=arr))

    def option(self, option_id, op, val=0, obj=0):
        o = uapi.iommu_option(size=24, option_id=option_id, op=op, val64=val, object_id=obj)
        return self.err(uapi.IOMMU_OPTION, o), o.val64

    def copy(self, dst, src, src_iova, length, dst_iova=None, flags=2):
        c = uapi.iommu_ioas_copy(size=40, dst_ioas_id=dst, src_ioas_id=src, src_iova=src_iova, length=length,
                                 dst_iova=dst_iova or 0,
                                 flags=flags | (uapi.IOMMU_IOAS_MAP_FIXED_IOVA if dst_iova is not None else 0))
        rc = self.err(uapi.IOMMU_IOAS_COPY, c)
        return rc, c.dst_iova

    def teardown_refs(self):
        """teardown_iommufd: close, reopen, no page of ``buffer`` is pinned any more."""
        self.h.close(self.fd)
        self.fd = self.h.open("/dev/iommu")
        return self.refs(self.buffer, BUFFER_SIZE, 0)


# -- IOMMU_IOAS_IOVA_RANGES ------------------------------------------------------------------
def test_iova_ranges_no_domain_then_reserved():
    st = St()
    ioas = st.ioas_alloc()
    assert st.iova_ranges(ioas, 256) == (0, 1, 1, [(0, SIZE_MAX)])
    # Buffer too small: num_iovas comes back, nothing is written, EMSGSIZE
    rc, num, _, _ = st.iova_ranges(ioas, 0)
    assert (rc, num) == (errno.EMSGSIZE, 1)
    assert st.add_reserved(ioas, PAGE, PAGE) == 0
    assert st.iova_ranges(ioas, 256) == (0, 2, 1, [(0, PAGE - 1), (2 * PAGE, SIZE_MAX)])
    arr = st.h.mem.mmap(64)
    rc, num, _, got = st.iova_ranges(ioas, 1, arr)
    assert (rc, num, got) == (errno.EMSGSIZE, 2, [(0, PAGE - 1)])
    assert st.h.mem.read(arr + 16, 16) == bytes(16)   # the second slot is untouched


def test_iova_ranges_with_mock_domain_is_the_aperture():
    st = St()
    ioas = st.ioas_alloc()
    st.mock_domain(ioas)
    assert st.iova_ranges(ioas, 256) == (0, 1, MOCK_PAGE, [(APERTURE, uapi.MOCK_APERTURE_LAST)])
    assert st.add_reserved(ioas, PAGE, PAGE) == 0   # outside the aperture: no new hole
    assert st.iova_ranges(ioas, 1)[:2] == (0, 1)


def test_iova_ranges_checks():
    st = St()
    ioas = st.ioas_alloc()
    q = uapi.iommu_ioas_iova_ranges(size=32, ioas_id=ioas, num_iovas=1, allowed_iovas=0x10)
    assert st.err(uapi.IOMMU_IOAS_IOVA_RANGES, q) == errno.EFAULT
    q = uapi.iommu_ioas_iova_ranges(size=32, ioas_id=ioas + 7)
    assert st.err(uapi.IOMMU_IOAS_IOVA_RANGES, q) == errno.ENOENT
    q = uapi.iommu_ioas_iova_ranges(size=32, ioas_id=ioas, **{"__reserved": 1})
    assert st.err(uapi.IOMMU_IOAS_IOVA_RANGES, q) == errno.EOPNOTSUPP


# -- IOMMU_IOAS_ALLOW_IOVAS ---------------------------------------------------------------------
def test_allow_iovas_rules():
    st = St()
    ioas = st.ioas_alloc()
    assert st.allow(ioas, [(5 * PAGE, 5 * PAGE)]) == errno.EINVAL            # start >= last
    assert st.allow(ioas, [(PAGE, 4 * PAGE), (3 * PAGE, 8 * PAGE)]) == errno.EINVAL  # overlap
    assert st.add_reserved(ioas, 4 * PAGE, 100 * PAGE) == 0
    assert st.allow(ioas, [(PAGE, 600 * PAGE)]) == errno.EADDRINUSE          # intersects reserved
    assert st.allow(ioas, [(200 * PAGE, 600 * PAGE - 1)]) == 0
    assert st.add_reserved(ioas, 300 * PAGE, PAGE) == errno.EADDRINUSE     # reserved in an allowed range
    iovas = []
    for i in range(10):
        length = PAGE * (i + 1)
        iovas.append(st.map(ioas, st.buffer, length))
        assert 200 * PAGE <= iovas[-1] and iovas[-1] + length - 1 <= 600 * PAGE - 1
        assert iovas[-1] % (length & -length) == 0
    assert st.allow(ioas, []) == 0                                          # cleared
    assert st.add_reserved(ioas, 300 * PAGE, PAGE) == 0
    assert st.add_reserved(ioas, iovas[0], PAGE) == errno.EADDRINUSE       # a mapping is there


def test_auto_iova_alignment_thp_switch():
    """iopt_alloc_iova aligns to min(roundup_pow_of_two(length), uptr's low bit, cap): the cap is
    HPAGE_SIZE with THP (the selftest's kernel), PAGE_SIZE without (the conformance kernel)."""
    for thp, expect_cap in ((True, 2 << 20), (False, PAGE)):
        st = St(thp=thp)
        ioas = st.ioas_alloc()
        big = st.h.mem.mmap(4 << 20)
        big = (big + (2 << 20) - 1) & ~((2 << 20) - 1)
        for n in (1, 2, 3, 4, 8, 10):
            length = PAGE * n
            iova = st.map(ioas, big, length)
            assert iova % min(length & -length, expect_cap) == 0
            if thp:
                assert iova % (length & -length) == 0
        assert st.map(ioas, big + 0x800, PAGE) % PAGE == 0x800   # the page offset is kept


# -- IOMMU_IOAS_COPY -----------------------------------------------------------------------------
def test_copy_shares_pages_and_checks():
    st = St()
    src = st.ioas_alloc()
    st.map(src, st.buffer, 4 * PAGE, iova=APERTURE)
    st.map(src, st.buffer + 4 * PAGE, 4 * PAGE, iova=APERTURE + 4 * PAGE)
    dst = st.ioas_alloc()
    st.mock_domain(dst)
    # across two contiguous areas; the destination's domain pins the pages once per iopt_pages
    assert st.copy(dst, src, APERTURE + PAGE, 6 * PAGE, dst_iova=APERTURE) == (0, APERTURE)
    assert st.refs(st.buffer + PAGE, 6 * PAGE, 1) == 0
    assert st.refs(st.buffer, PAGE, 0) == 0
    assert st.copy(dst, src, APERTURE - PAGE, PAGE) == (errno.ENOENT, 0)         # nothing mapped there
    assert st.copy(dst, src, APERTURE + 7 * PAGE, 2 * PAGE) == (errno.ENOENT, 0)  # runs off the end
    assert st.copy(dst, src, APERTURE, PAGE, flags=0)[0] == errno.EINVAL           # no READ/WRITE
    assert st.copy(dst, src, APERTURE, PAGE, flags=1 << 3)[0] == errno.EOPNOTSUPP
    assert st.copy(dst, src, APERTURE, PAGE, dst_iova=APERTURE)[0] == errno.EEXIST
    assert st.copy(dst + 9, src, APERTURE, PAGE)[0] == errno.ENOENT
    rc, iova = st.copy(dst, src, APERTURE, PAGE)                                  # IOVA allocated
    assert rc == 0 and iova >= APERTURE
    assert st.teardown_refs() == 0


def test_copy_of_read_only_pages_as_writeable_is_eperm():
    st = St()
    src = st.ioas_alloc()
    st.map(src, st.buffer, PAGE, iova=APERTURE, flags=uapi.IOMMU_IOAS_MAP_READABLE)
    dst = st.ioas_alloc()
    assert st.copy(dst, src, APERTURE, PAGE, flags=uapi.IOMMU_IOAS_MAP_WRITEABLE)[0] == errno.EPERM
    assert st.copy(dst, src, APERTURE, PAGE, flags=uapi.IOMMU_IOAS_MAP_READABLE)[0] == 0


# -- IOMMU_OPTION -------------------------------------------------------------------------------
def test_global_option_rlimit_mode():
    st = St()
    G, S, R = uapi.IOMMU_OPTION_OP_GET, uapi.IOMMU_OPTION_OP_SET, uapi.IOMMU_OPTION_RLIMIT_MODE
    assert st.option(R, G, val=1) == (0, 0)
    assert st.option(R, S, val=1) == (0, 1)
    assert st.option(R, S, val=2) == (errno.EINVAL, 2)
    assert st.option(R, G) == (0, 1)
    assert st.option(R, G, obj=1)[0] == errno.EOPNOTSUPP
    assert st.option(uapi.IOMMU_OPTION_HUGE_PAGES, G)[0] == errno.ENOENT   # object 0 is no IOAS
    assert st.option(7, G)[0] == errno.EOPNOTSUPP
    st.ioas_alloc()
    assert st.option(R, S, val=0)[0] == errno.EBUSY                         # objects exist
    st.h.cap_sys_resource = False
    assert st.option(R, S, val=0)[0] == errno.EPERM


def test_ioas_option_huge_pages_and_alignment():
    st = St()
    G, S, H = uapi.IOMMU_OPTION_OP_GET, uapi.IOMMU_OPTION_OP_SET, uapi.IOMMU_OPTION_HUGE_PAGES
    ioas = st.ioas_alloc()
    assert st.option(H, G, val=3, obj=ioas) == (0, 1)
    st.map(ioas, st.buffer, PAGE, iova=APERTURE)
    assert st.option(H, S, val=0, obj=ioas)[0] == 0                           # aligned: upgrade to PAGE_SIZE
    assert st.option(H, G, val=3, obj=ioas) == (0, 0)
    assert st.err(uapi.IOMMU_IOAS_MAP, st.map_cmd(ioas, st.buffer + MOCK_PAGE, PAGE, APERTURE + PAGE)) \
        == errno.EINVAL                                                         # misaligned page offset
    assert st.option(H, S, val=2, obj=ioas)[0] == errno.EINVAL
    assert st.option(H, S, val=1, obj=ioas)[0] == 0
    st.map(ioas, st.buffer + MOCK_PAGE, PAGE, iova=APERTURE + PAGE)
    assert st.option(H, S, val=0, obj=ioas)[0] == errno.EADDRINUSE
    assert st.option(H, G, obj=ioas) == (0, 1)                                  # stays enabled
    other = st.ioas_alloc()
    st.mock_domain(other)
    st.map(other, st.buffer, PAGE, iova=APERTURE)
    assert st.option(H, S, val=0, obj=other)[0] == errno.EINVAL                # a domain holds mappings


# -- access objects -------------------------------------------------------------------------------
def test_access_pin_refs_and_unmap_callback():
    st = St()
    ioas = st.ioas_alloc()
    assert st.err(uapi.IOMMU_TEST_CMD, st.test_cmd(uapi.IOMMU_TEST_OP_CREATE_ACCESS, ioas,
                                                   create_access=dict(flags=2))) == errno.EOPNOTSUPP
    afd = st.create_access(ioas)
    st.map(ioas, st.buffer, BUFFER_SIZE, iova=APERTURE)
    assert st.refs(st.buffer, BUFFER_SIZE, 0) == 0           # no domain: nothing pinned by the map
    a = st.access_pages(afd, APERTURE, 3 * PAGE, uptr=st.buffer)
    b = st.access_pages(afd, APERTURE, 3 * PAGE, uptr=st.buffer)   # the same range: one more user
    assert (a, b) == (0, 1)
    assert st.refs(st.buffer, 3 * PAGE, 1) == 0
    assert st.refs(st.buffer + 3 * PAGE, PAGE, 0) == 0
    assert st.refs(st.buffer, PAGE, 2) == errno.EIO
    with pytest.raises(KernelErr) as e:                      # the pages under uptr must be the pinned ones
        st.access_pages(afd, APERTURE, PAGE, uptr=st.buffer + PAGE)
    assert e.value.errno == errno.EBADE
    stdev, _ = st.mock_domain(ioas)                          # a domain pins too: still one pin per page
    assert st.refs(st.buffer, BUFFER_SIZE, 1) == 0
    st.ioctl(uapi.IOMMU_DESTROY, uapi.iommu_destroy(size=8, id=stdev))
    assert st.destroy_access_pages(afd, b) == 0
    assert st.refs(st.buffer, 3 * PAGE, 1) == 0
    # unmap calls the access's unmap op, which drops the item
    assert st.unmap(ioas, APERTURE, BUFFER_SIZE) == BUFFER_SIZE
    assert st.destroy_access_pages(afd, a) == errno.ENOENT
    assert st.refs(st.buffer, BUFFER_SIZE, 0) == 0
    st.h.close(afd)
    assert st.teardown_refs() == 0


def test_access_pages_errors():
    st = St()
    ioas = st.ioas_alloc()
    plain = st.create_access(ioas, flags=0)
    st.map(ioas, st.buffer, BUFFER_SIZE, iova=APERTURE)
    with pytest.raises(KernelErr) as e:
        st.access_pages(plain, APERTURE, PAGE)
    assert e.value.errno == errno.EOPNOTSUPP                 # made without NEEDS_PIN_PAGES
    afd = st.create_access(ioas)
    for iova, length, err in ((APERTURE, 0, errno.EINVAL), (APERTURE + 100, PAGE, errno.EINVAL),
                              (APERTURE + BUFFER_SIZE - PAGE, 2 * PAGE, errno.ENOENT),
                              (APERTURE, 17 << 20, errno.ENOMEM)):
        with pytest.raises(KernelErr) as e:
            st.access_pages(afd, iova, length)
        assert e.value.errno == err
    with pytest.raises(KernelErr) as e:
        st.access_pages(9999, APERTURE, PAGE)
    assert e.value.errno == errno.EBADFD
    ro = st.ioas_alloc()
    st.map(ro, st.buffer, PAGE, iova=APERTURE, flags=uapi.IOMMU_IOAS_MAP_READABLE)
    rofd = st.create_access(ro)
    with pytest.raises(KernelErr) as e:
        st.access_pages(rofd, APERTURE, PAGE, flags=uapi.MOCK_FLAGS_ACCESS_WRITE)
    assert e.value.errno == errno.EPERM
    assert st.refs(st.buffer, BUFFER_SIZE, 0) == 0           # failed pins left nothing behind
    # a pinning access raises the IOAS's alignment to PAGE_SIZE: misaligned maps fail now
    assert st.err(uapi.IOMMU_IOAS_MAP, st.map_cmd(ioas, st.buffer + MOCK_PAGE, MOCK_PAGE)) == errno.EINVAL
    for f in (plain, afd, rofd):
        st.h.close(f)
    st.map(ioas, st.buffer + MOCK_PAGE, MOCK_PAGE)           # and back to 1 without accesses


def test_access_creation_needs_aligned_ioas():
    st = St()
    ioas = st.ioas_alloc()
    st.map(ioas, st.buffer + MOCK_PAGE, MOCK_PAGE, iova=APERTURE)
    c = st.test_cmd(uapi.IOMMU_TEST_OP_CREATE_ACCESS, ioas,
                    create_access=dict(flags=uapi.MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES))
    nfiles = len(st.h.files)
    assert st.err(uapi.IOMMU_TEST_CMD, c) == errno.EADDRINUSE
    assert len(st.h.files) == nfiles and [o.type for o in st.h.ctxs[st.fd].objects.values()] == ["ioas"]
    assert st.create_access(ioas, flags=0) > 0               # a non-pinning access needs no alignment
    c = st.test_cmd(uapi.IOMMU_TEST_OP_CREATE_ACCESS, ioas + 5, create_access=dict(flags=0))
    assert st.err(uapi.IOMMU_TEST_CMD, c) == errno.ENOENT


@pytest.mark.parametrize("offset", [0, MOCK_PAGE])
def test_access_rw_reads_and_writes_user_memory(offset):
    st = St()
    ioas = st.ioas_alloc()
    afd = st.create_access(ioas, flags=0)
    iova = st.map(ioas, st.buffer, BUFFER_SIZE, iova=APERTURE + offset)
    pattern = bytes((i * 7) & 0xFF for i in range(BUFFER_SIZE))
    st.h.mem.write(st.buffer, pattern)
    tmp = st.h.mem.mmap(BUFFER_SIZE)
    for start, n in ((PAGE - 50, 1), (PAGE - 3, 40), (0, BUFFER_SIZE)):
        for flags in (0, uapi.MOCK_ACCESS_RW_SLOW_PATH):
            assert st.access_rw(afd, iova + start, tmp, n, flags) == 0
            assert st.h.mem.read(tmp, n) == pattern[start:start + n]
    st.h.mem.write(tmp, b"\xAA" * 40)
    assert st.access_rw(afd, iova + PAGE - 3, tmp, 40, uapi.MOCK_ACCESS_RW_WRITE) == 0
    assert st.h.mem.read(st.buffer + PAGE - 3, 40) == b"\xAA" * 40
    assert st.access_rw(afd, iova + BUFFER_SIZE - 1, tmp, 2) == errno.ENOENT
    assert st.access_rw(afd, iova, tmp, 0) == errno.EINVAL
    assert st.access_rw(afd, iova, tmp, 4, flags=1 << 1) == errno.EOPNOTSUPP
    assert st.access_rw(afd, iova, 0x10, 4) == errno.EFAULT   # copy_to_user of the result


def test_access_rw_of_read_only_mapping():
    st = St()
    ioas = st.ioas_alloc()
    afd = st.create_access(ioas, flags=0)
    st.map(ioas, st.buffer, PAGE, iova=APERTURE, flags=uapi.IOMMU_IOAS_MAP_READABLE)
    tmp = st.h.mem.mmap(PAGE)
    assert st.access_rw(afd, APERTURE, tmp, 8) == 0
    assert st.access_rw(afd, APERTURE, tmp, 8, uapi.MOCK_ACCESS_RW_WRITE) == errno.EPERM


def test_access_replace_ioas_moves_pins_and_users():
    st = St()
    ioas = st.ioas_alloc()
    st.map(ioas, st.buffer, BUFFER_SIZE, iova=APERTURE)
    afd = st.create_access(ioas)
    st.access_pages(afd, APERTURE, BUFFER_SIZE, uptr=st.buffer)
    new = st.ioas_alloc()
    st.map(new, st.buffer, BUFFER_SIZE, iova=APERTURE)
    c = st.test_cmd(uapi.IOMMU_TEST_OP_ACCESS_REPLACE_IOAS, afd, access_replace_ioas=dict(ioas_id=new))
    assert st.err(uapi.IOMMU_TEST_CMD, c) == 0
    assert st.refs(st.buffer, BUFFER_SIZE, 0) == 0           # the unmap op ran over everything
    assert st.err(uapi.IOMMU_DESTROY, uapi.iommu_destroy(size=8, id=new)) == errno.EBUSY
    assert st.err(uapi.IOMMU_DESTROY, uapi.iommu_destroy(size=8, id=ioas)) == 0
    c.access_replace_ioas.ioas_id = 77
    assert st.err(uapi.IOMMU_TEST_CMD, c) == errno.ENOENT
    st.h.close(afd)
    assert st.err(uapi.IOMMU_DESTROY, uapi.iommu_destroy(size=8, id=new)) == 0


def test_access_keeps_ctx_alive_after_close():
    st = St()
    ioas = st.ioas_alloc()
    st.map(ioas, st.buffer, PAGE, iova=APERTURE)
    afd = st.create_access(ioas)
    st.access_pages(afd, APERTURE, PAGE)
    old = st.fd
    st.h.close(old)
    assert old in st.h.ctxs                                    # the access holds the ctx
    st.fd = st.h.open("/dev/iommu")
    assert st.refs(st.buffer, PAGE, 1) == 0
    st.h.close(afd)
    assert old not in st.h.ctxs
    assert st.refs(st.buffer, PAGE, 0) == 0


def test_destroy_access_object_id_is_busy():
    st = St()
    ioas = st.ioas_alloc()
    afd = st.create_access(ioas)
    access_id = next(i for i, o in st.h.ctxs[st.fd].objects.items() if o.type == "access")
    assert st.err(uapi.IOMMU_DESTROY, uapi.iommu_destroy(size=8, id=access_id)) == errno.EBUSY
    assert st.err(uapi.IOMMU_DESTROY, uapi.iommu_destroy(size=8, id=ioas)) == errno.EBUSY
    st.h.close(afd)
    assert st.err(uapi.IOMMU_DESTROY, uapi.iommu_destroy(size=8, id=ioas)) == 0


# -- pinning from the source process --------------------------------------------------------------
def test_map_with_domain_pins_user_memory_efault():
    st = St()
    ioas = st.ioas_alloc()
    st.mock_domain(ioas)
    small = st.h.mem.mmap(2 * PAGE)
    m = st.map_cmd(ioas, small, 8 * PAGE)
    assert st.err(uapi.IOMMU_IOAS_MAP, m) == errno.EFAULT     # half of it is not mapped
    assert not st.h.ctxs[st.fd].objects[ioas].iopt.areas       # nothing left behind
    assert st.refs(small, 2 * PAGE, 0) == 0
    other = st.ioas_alloc()                                      # no domain: no pin, no EFAULT
    st.map(other, small, 8 * PAGE)


def test_pages_of_an_exited_process():
    """fork_gone: pages mapped by a process that has exited can no longer be pinned
    (mock domain -> EFAULT); already pinned ones are still reachable."""
    st = St()
    parent = st.h.mem
    child = Proc("child")
    st.h.remote_mem = lambda key: child if key == "child" and child.alive else None
    shared = child.mmap(BUFFER_SIZE)
    for with_domain in (False, True):
        ioas = st.ioas_alloc()
        afd = st.create_access(ioas, flags=0)
        if with_domain:
            st.mock_domain(ioas)
        st.h.mem = child
        st.map(ioas, shared, BUFFER_SIZE, iova=APERTURE)
        st.h.mem = parent
        child.alive = False
        try:
            if not with_domain:
                c = st.test_cmd(uapi.IOMMU_TEST_OP_MOCK_DOMAIN, ioas)
                assert st.err(uapi.IOMMU_TEST_CMD, c) == errno.EFAULT
            else:
                st.mock_domain(ioas)                          # copied from the first domain
                # The pinned pages are reached through the caller's memory at the same address
                # (MAP_SHARED across fork): the parent's buffer sits where the child's did.
                assert shared == st.buffer
                st.h.mem.write(st.buffer + 10, b"shared")
                tmp = st.h.mem.mmap(8)
                assert st.access_rw(afd, APERTURE + 10, tmp, 6) == 0
                assert st.h.mem.read(tmp, 6) == b"shared"
                assert st.access_rw(afd + 100, APERTURE + 10, tmp, 6) == errno.EBADFD
        finally:
            child.alive = True
        st.h.close(afd)


def test_access_rw_reaches_another_live_process():
    """fork_present: an access reads pages another (live) process mapped, from that process."""
    st = St()
    parent = st.h.mem
    child = Proc("child")
    st.h.remote_mem = lambda key: child if key == "child" and child.alive else None
    cbuf = child.mmap(PAGE)
    child.write(cbuf, b"from the child")
    ioas = st.ioas_alloc()
    afd = st.create_access(ioas, flags=0)
    st.h.mem = child
    st.map(ioas, cbuf, PAGE, iova=APERTURE)
    st.h.mem = parent
    tmp = parent.mmap(PAGE)
    assert st.access_rw(afd, APERTURE, tmp, 14) == 0
    assert parent.read(tmp, 14) == b"from the child"
    st.mock_domain(ioas)                                      # pins from the child, alive
    assert st.refs(st.buffer, PAGE, 0) == 0                  # the parent's pages are other pages


# -- unmap with accesses, EDEADLOCK ------------------------------------------------------------------
def test_unmap_edeadlock_when_access_does_not_unpin():
    st = St()
    ioas = st.ioas_alloc()
    st.map(ioas, st.buffer, PAGE, iova=APERTURE)
    afd = st.create_access(ioas)
    st.access_pages(afd, APERTURE, PAGE)
    staccess = st.h.files[afd]
    calls = []

    class Stubborn:   # a driver whose unmap op never unpins
        needs_pin_pages = True

        def unmap(self, access, iova, length):
            calls.append((iova, length))

    staccess.access.ops = Stubborn()
    u = uapi.iommu_ioas_unmap(size=24, ioas_id=ioas, iova=APERTURE, length=PAGE)
    assert st.err(uapi.IOMMU_IOAS_UNMAP, u) == errno.EDEADLK
    assert len(calls) == 101 and calls[0] == (APERTURE, PAGE)
    staccess.access.ops = staccess
    assert st.unmap(ioas, APERTURE, PAGE) == PAGE


# -- VFIO compat ---------------------------------------------------------------------------------------
def _val(v):
    return bytearray(v.to_bytes(8, "little"))


def test_arg_conventions_declared():
    assert uapi.VFIO_SET_IOMMU in ARG_IS_VALUE and uapi.VFIO_CHECK_EXTENSION in ARG_IS_VALUE
    assert ARGSZ_MINSZ[uapi.VFIO_IOMMU_GET_INFO] == 16 and ARGSZ_MINSZ[uapi.VFIO_IOMMU_MAP_DMA] == 32
    assert ARGSZ_MINSZ[uapi.VFIO_IOMMU_UNMAP_DMA] == 24


def test_vfio_compat_without_ioas():
    st = St()
    assert st.ioctl(uapi.VFIO_GET_API_VERSION, _val(0)) == uapi.VFIO_API_VERSION
    assert st.ioctl(uapi.VFIO_CHECK_EXTENSION, _val(uapi.VFIO_TYPE1v2_IOMMU)) == 1
    assert st.ioctl(uapi.VFIO_CHECK_EXTENSION, _val(uapi.VFIO_NOIOMMU_IOMMU)) == 0
    assert st.err(uapi.VFIO_CHECK_EXTENSION, _val(uapi.VFIO_DMA_CC_IOMMU)) == errno.ENODEV
    assert st.err(uapi.VFIO_SET_IOMMU, _val(uapi.VFIO_TYPE1v2_IOMMU)) == errno.ENODEV
    assert st.err(uapi.VFIO_SET_IOMMU, _val(2)) == errno.EINVAL
    um = uapi.vfio_iommu_type1_dma_unmap(argsz=1, iova=APERTURE, size=PAGE)
    assert st.err(uapi.VFIO_IOMMU_UNMAP_DMA, um) == errno.EINVAL
    um.argsz, um.flags = 24, 1 << 31
    assert st.err(uapi.VFIO_IOMMU_UNMAP_DMA, um) == errno.EINVAL
    um.flags = 0
    assert st.err(uapi.VFIO_IOMMU_UNMAP_DMA, um) == errno.ENODEV
    mp = uapi.vfio_iommu_type1_dma_map(argsz=1, iova=APERTURE, size=PAGE, vaddr=st.buffer)
    assert st.err(uapi.VFIO_IOMMU_MAP_DMA, mp) == errno.EINVAL
    mp.argsz, mp.flags = 32, 1 << 31
    assert st.err(uapi.VFIO_IOMMU_MAP_DMA, mp) == errno.EINVAL
    mp.flags = 3
    assert st.err(uapi.VFIO_IOMMU_MAP_DMA, mp) == errno.ENODEV
    assert st.err(uapi.VFIO_IOMMU_GET_INFO, uapi.vfio_iommu_type1_info(argsz=1)) == errno.EINVAL
    assert st.err(uapi.VFIO_IOMMU_GET_INFO, uapi.vfio_iommu_type1_info(argsz=24)) == errno.ENODEV
    assert st.err(uapi.VFIO_IOMMU_DIRTY_PAGES, bytearray(64)) == errno.ENOTTY
    assert st.err(uapi._IO(uapi.IOMMUFD_TYPE, 0x7F), bytearray(64)) == errno.ENOTTY


def _compat(version):
    st = St()
    ioas = st.ioas_alloc()
    st.mock_domain(ioas)
    st.ioctl(uapi.IOMMU_VFIO_IOAS, uapi.iommu_vfio_ioas(size=12, ioas_id=ioas, op=uapi.IOMMU_VFIO_IOAS_SET))
    assert st.ioctl(uapi.VFIO_SET_IOMMU, _val(version)) == 0
    return st, ioas


@pytest.mark.parametrize("version,huge", [(uapi.VFIO_TYPE1v2_IOMMU, 1), (uapi.VFIO_TYPE1_IOMMU, 0)])
def test_vfio_compat_type1_huge_pages_option(version, huge):
    st, ioas = _compat(version)
    assert st.option(uapi.IOMMU_OPTION_HUGE_PAGES, uapi.IOMMU_OPTION_OP_GET, val=3, obj=ioas) == (0, huge)
    assert st.ioctl(uapi.VFIO_CHECK_EXTENSION, _val(uapi.VFIO_DMA_CC_IOMMU)) == 0   # mock: no CC


def test_vfio_compat_get_info_cap_chain():
    st, _ = _compat(uapi.VFIO_TYPE1v2_IOMMU)
    buf = bytearray(b"\xAA" * 256)
    buf[:16] = bytes(uapi.vfio_iommu_type1_info(argsz=16))[:16]   # pre-cap ABI
    assert st.ioctl(uapi.VFIO_IOMMU_GET_INFO, buf) == 0
    info = uapi.vfio_iommu_type1_info.from_buffer_copy(buf)
    assert info.argsz == 24 + 16 + 32 and info.flags == 3 and info.iova_pgsizes
    assert buf[16:] == b"\xAA" * 240                               # nothing past argsz
    for argsz in range(24, 72):
        buf = bytearray(b"\xAA" * 256)
        buf[:24] = bytes(uapi.vfio_iommu_type1_info(argsz=argsz))
        st.ioctl(uapi.VFIO_IOMMU_GET_INFO, buf)
        info = uapi.vfio_iommu_type1_info.from_buffer_copy(buf)
        assert (info.argsz, info.flags, info.cap_offset) == (72, 3, 0)
        assert buf[argsz:] == b"\xAA" * (256 - argsz)
    buf = bytearray(b"\xAA" * 256)
    buf[:24] = bytes(uapi.vfio_iommu_type1_info(argsz=72))
    st.ioctl(uapi.VFIO_IOMMU_GET_INFO, buf)
    info = uapi.vfio_iommu_type1_info.from_buffer_copy(buf)
    assert info.cap_offset == 24
    avail = uapi.vfio_iommu_type1_info_dma_avail.from_buffer_copy(buf, 24)
    assert (avail.header.id, avail.header.version, avail.header.next, avail.avail) == (3, 1, 40, 0xFFFFFFFF)
    iova = uapi.vfio_iommu_type1_info_cap_iova_range.from_buffer_copy(buf, 40)
    assert (iova.header.id, iova.header.version, iova.header.next, iova.nr_iovas) == (1, 1, 0, 1)
    r = uapi.vfio_iova_range.from_buffer_copy(buf, 56)
    assert (r.start, r.end) == (APERTURE, uapi.MOCK_APERTURE_LAST)


def test_vfio_compat_map_unmap():
    st, _ = _compat(uapi.VFIO_TYPE1v2_IOMMU)
    mp = uapi.vfio_iommu_type1_dma_map(argsz=32, flags=3, vaddr=st.buffer, size=BUFFER_SIZE, iova=APERTURE)
    um = uapi.vfio_iommu_type1_dma_unmap(argsz=24, size=BUFFER_SIZE, iova=APERTURE)
    assert st.ioctl(uapi.VFIO_IOMMU_MAP_DMA, mp) == 0
    assert st.ioctl(uapi.VFIO_IOMMU_UNMAP_DMA, um) == 0 and um.size == BUFFER_SIZE
    assert st.ioctl(uapi.VFIO_IOMMU_UNMAP_DMA, um) == 0 and um.size == 0   # unmap of empty is success
    st.ioctl(uapi.VFIO_IOMMU_MAP_DMA, mp)
    um.flags, um.size = uapi.VFIO_DMA_UNMAP_FLAG_ALL, BUFFER_SIZE
    assert st.err(uapi.VFIO_IOMMU_UNMAP_DMA, um) == errno.EINVAL
    um.iova = um.size = 0
    assert st.ioctl(uapi.VFIO_IOMMU_UNMAP_DMA, um) == 0 and um.size == BUFFER_SIZE
    assert st.teardown_refs() == 0


@pytest.mark.parametrize("version", [uapi.VFIO_TYPE1_IOMMU, uapi.VFIO_TYPE1v2_IOMMU])
def test_vfio_compat_unmap_inside_a_mapping(version):
    """huge_map: type1 (v1) cuts areas so any piece can be unmapped, type1v2 answers ENOENT."""
    st, ioas = _compat(version)
    size = 4 << 20
    buf = st.h.mem.mmap(size)
    st.ioctl(uapi.VFIO_IOMMU_MAP_DMA, uapi.vfio_iommu_type1_dma_map(argsz=32, flags=3, vaddr=buf, size=size,
                                                                   iova=APERTURE))
    piece = size // 16
    order = [5, 0, 15, 7, 1, 14, 3, 9, 2, 11, 4, 13, 6, 10, 8, 12]
    for i in order:
        um = uapi.vfio_iommu_type1_dma_unmap(argsz=24, size=piece, iova=APERTURE + i * piece)
        rc = st.err(uapi.VFIO_IOMMU_UNMAP_DMA, um)
        if version == uapi.VFIO_TYPE1_IOMMU:
            assert rc == 0 and um.size == piece
        else:
            assert rc == errno.ENOENT and um.size == 0   # the length unmapped is copied back anyway
    iopt = st.h.ctxs[st.fd].objects[ioas].iopt
    assert len(iopt.areas) == (0 if version == uapi.VFIO_TYPE1_IOMMU else 1)
    assert st.refs(buf, size, 0 if version == uapi.VFIO_TYPE1_IOMMU else 1) == 0


def test_cut_refuses_area_pinned_by_access():
    st, ioas = _compat(uapi.VFIO_TYPE1_IOMMU)
    st.ioctl(uapi.VFIO_IOMMU_MAP_DMA, uapi.vfio_iommu_type1_dma_map(argsz=32, flags=3, vaddr=st.buffer,
                                                                   size=4 * PAGE, iova=APERTURE))
    afd = st.create_access(ioas)
    st.access_pages(afd, APERTURE, PAGE)
    um = uapi.vfio_iommu_type1_dma_unmap(argsz=24, size=PAGE, iova=APERTURE + PAGE)
    assert st.err(uapi.VFIO_IOMMU_UNMAP_DMA, um) == errno.EINVAL
    st.h.close(afd)
    assert st.err(uapi.VFIO_IOMMU_UNMAP_DMA, um) == 0


# -- state as a value -------------------------------------------------------------------------------
def test_clone_keeps_shared_pages_shared():
    st = St()
    src = st.ioas_alloc()
    st.map(src, st.buffer, 4 * PAGE, iova=APERTURE)
    dst = st.ioas_alloc()
    st.copy(dst, src, APERTURE, 4 * PAGE, dst_iova=APERTURE, flags=6)
    afd = st.create_access(dst)
    st.access_pages(afd, APERTURE, PAGE)
    clone = st.h.clone()
    assert clone.snapshot() == st.h.snapshot()
    objs = clone.ctxs[st.fd].objects
    p_src = objs[src].iopt.area_src[APERTURE].pages
    p_dst = objs[dst].iopt.area_src[APERTURE].pages
    assert p_src is p_dst and p_src.mm is clone.mem and p_src is not st.h.ctxs[st.fd].objects[src].iopt.area_src[
        APERTURE].pages
    assert copy.deepcopy(st.h).snapshot() == st.h.snapshot()


# -- fail-nth: every injected failure leaves the state as it was ---------------------------------------
def _setup_mapped(domain: bool, access: bool = False):
    st = St()
    src = st.ioas_alloc()
    st.map(src, st.buffer, BUFFER_SIZE, iova=APERTURE)
    dst = st.ioas_alloc()
    if domain:
        st.mock_domain(dst)
    if access:
        st.afd = st.create_access(src)
    return st, src, dst


FINALS = {
    "map-pins": (lambda: _setup_mapped(True), lambda st, src, dst: st.map(dst, st.buffer, BUFFER_SIZE)),
    "domain-fill": (lambda: _setup_mapped(False), lambda st, src, dst: st.mock_domain(src)),
    "copy-pins": (lambda: _setup_mapped(True),
                  lambda st, src, dst: st.ioctl(uapi.IOMMU_IOAS_COPY, uapi.iommu_ioas_copy(
                      size=40, flags=6, dst_ioas_id=dst, src_ioas_id=src, src_iova=APERTURE + PAGE,
                      length=4 * PAGE))),
    "access-pages": (lambda: _setup_mapped(True, access=True),
                     lambda st, src, dst: st.access_pages(st.afd, APERTURE, 4 * PAGE)),
    "create-access": (lambda: _setup_mapped(True), lambda st, src, dst: st.create_access(src)),
}


@pytest.mark.parametrize("name", FINALS)
def test_fail_nth_leaves_state_unchanged(name):
    setup, final = FINALS[name]
    n = 1
    while True:
        st, src, dst = setup()
        before = st.h.snapshot()
        nfiles = set(st.h.files)
        st.h.fallible_count, st.h.fail_nth = 0, n
        try:
            final(st, src, dst)
            failed = False
        except KernelErr as e:
            assert "fail-nth" in e.detail and e.errno in (errno.ENOMEM, errno.EFAULT), e.detail
            failed = True
        st.h.fail_nth = 0
        if not failed:
            break
        assert set(st.h.files) == nfiles and st.h.snapshot() == before, f"fail_nth={n} changed the state"
        for f in set(st.h.files) - {st.fd}:
            st.h.close(f)
        assert st.teardown_refs() == 0
        n += 1
    assert n > 1          # the sweep met at least one failure point


# -- the client API over the same ioctls ----------------------------------------------------------------
def test_client_iova_ranges_allow_copy_and_huge_pages():
    from pyiommufd.client import Iommufd, emulated
    from pyiommufd.errors import IoctlError
    emu = emulated(System(iommu="mock", units=(Unit("mock0"),)), "linux-6.12")
    with Iommufd(emu.transport) as ifd:
        a, b = ifd.ioas_alloc(), ifd.ioas_alloc()
        assert a.iova_ranges() == ([(0, SIZE_MAX)], 1)
        reserve = uapi.iommu_test_cmd(size=72, op=uapi.IOMMU_TEST_OP_ADD_RESERVED, id=a.id)
        for i in range(12):   # 13 holes: more than the first array holds
            reserve.add_reserved.start, reserve.add_reserved.length = (2 * i + 1) * PAGE, PAGE
            ifd.ioctl(uapi.IOMMU_TEST_CMD, reserve)
        ranges, align = a.iova_ranges()
        assert len(ranges) == 13 and ranges[0] == (0, PAGE - 1) and ranges[-1] == (24 * PAGE, SIZE_MAX)
        a.allow_iovas([(64 * PAGE, 128 * PAGE - 1)])
        iova = a.map(None, 4 * PAGE)
        assert 64 * PAGE <= iova < 128 * PAGE
        assert b.copy_from(a, iova + PAGE, 2 * PAGE, 0x100000) == 0x100000
        assert b.unmap(0x100000, 2 * PAGE) == 2 * PAGE
        assert a.huge_pages
        a.huge_pages = False
        assert not a.huge_pages
        with pytest.raises(IoctlError) as e:
            a.allow_iovas([(PAGE, 3 * PAGE)])          # intersects a reserved range
        assert e.value.errno_name == "EADDRINUSE"
        a.allow_iovas([])
        assert ifd.option(uapi.IOMMU_OPTION_RLIMIT_MODE, uapi.IOMMU_OPTION_OP_GET) == 0
