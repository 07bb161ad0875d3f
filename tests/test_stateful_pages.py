"""Hypothesis stateful test of iopt_pages and pins (kernel/pages.py, io_pagetable.py, access.py).

Random sequences of IOAS_MAP, IOAS_COPY, IOAS_UNMAP, VFIO-style cuts, mock domains coming and
going, and test accesses pinning and unpinning, on two IOASes sharing one user buffer.  A
shadow kept in the test's own terms -- which map call each area's pages came from and which
page indexes of them it covers -- predicts every page's pin count (pages.c: one FOLL_PIN per
iopt_pages while a domain holds an area over the page or an access pinned it), which
IOMMU_TEST_OP_MD_CHECK_REFS must report after every step.  At the end, closing everything
leaves no page pinned.
"""
from __future__ import annotations

import errno
from collections import Counter

from hypothesis import HealthCheck, settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test

from pyiommufd import uapi
from pyiommufd.kernel.err import KernelErr
from test_selftest_pages import APERTURE, PAGE, St

NPAGES = 8          # the user buffer
SEEN: Counter = Counter()   # "sometimes" properties: the run reached these
SLOTS = 3           # IOVA slots of NPAGES pages each, per IOAS (few: rules meet mapped slots)


class PagesMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.st = St()
        self.buf = self.st.h.mem.mmap(NPAGES * PAGE)
        self.ioas = [self.st.ioas_alloc(), self.st.ioas_alloc()]
        self.stdev = [None, None]          # a mock domain per IOAS, or None
        # IOAS 0 has a pinning access: its alignment is PAGE_SIZE; IOAS 1 has none (1, or the
        # mock domain's 2 KiB)
        self.afd = self.st.create_access(self.ioas[0])
        self.next_map = 0
        # shadow: per IOAS, slot -> (map id, first page index, last page index, length, page offset)
        self.areas = [{}, {}]
        self.items = []                    # the access's: (item id, slot, map id, first, last)

    def iova(self, slot, offset=0):
        return APERTURE + slot * NPAGES * PAGE + offset

    # -- shadow prediction ---------------------------------------------------------------
    def expected_pins(self):
        pinned = {}   # map id -> set of page indexes
        for k in (0, 1):
            for mid, first, last, _, _ in self.areas[k].values():
                if self.stdev[k] is not None:
                    pinned.setdefault(mid, set()).update(range(first, last + 1))
        for _, _, mid, first, last in self.items:
            pinned.setdefault(mid, set()).update(range(first, last + 1))
        counts = [0] * NPAGES
        for pages in pinned.values():
            for p in pages:
                counts[p] += 1
        return counts

    # -- rules ------------------------------------------------------------------------------
    @rule(k=st.integers(0, 1), slot=st.integers(0, SLOTS - 1), first=st.integers(0, NPAGES - 1),
          npages=st.integers(1, 3), offset=st.sampled_from([0, 0x800]))
    def map(self, k, slot, first, npages, offset):
        npages = min(npages, NPAGES - first)
        length = npages * PAGE - offset
        m = self.st.map_cmd(self.ioas[k], self.buf + first * PAGE + offset, length, self.iova(slot, offset))
        rc = self.st.err(uapi.IOMMU_IOAS_MAP, m)
        if offset and k == 0:
            assert rc == errno.EINVAL          # below the access's PAGE_SIZE alignment (checked first)
            return
        if slot in self.areas[k]:
            assert rc == errno.EEXIST
            return
        assert rc == 0
        self.areas[k][slot] = (self.next_map, first, first + npages - 1, length, offset)
        self.next_map += 1

    @rule(src=st.integers(0, 1), slot=st.integers(0, SLOTS - 1), dst_slot=st.integers(0, SLOTS - 1))
    def copy(self, src, slot, dst_slot):
        dst = 1 - src
        area = self.areas[src].get(slot)
        if area is None:
            return
        mid, first, last, length, offset = area
        rc, _ = self.st.copy(self.ioas[dst], self.ioas[src], self.iova(slot, offset), length,
                             dst_iova=self.iova(dst_slot, offset), flags=6)
        if offset and dst == 0:
            assert rc == errno.EINVAL
            return
        if dst_slot in self.areas[dst]:
            assert rc == errno.EEXIST
            return
        assert rc == 0
        self.areas[dst][dst_slot] = area       # the same iopt_pages: no new pins for a page
        SEEN["copy into a domain"] += self.stdev[dst] is not None

    @rule(k=st.integers(0, 1), slot=st.integers(0, SLOTS - 1))
    def unmap(self, k, slot):
        area = self.areas[k].get(slot)
        u = uapi.iommu_ioas_unmap(size=24, ioas_id=self.ioas[k], iova=self.iova(slot), length=NPAGES * PAGE)
        rc = self.st.err(uapi.IOMMU_IOAS_UNMAP, u)
        if area is None:
            assert rc == errno.ENOENT
            return
        assert rc == 0 and u.length == area[3]
        del self.areas[k][slot]
        SEEN["unmap of a pinned area"] += any(it[1] == slot for it in self.items) and k == 0
        if k == 0:   # the access's unmap op dropped every item pinned through that area
            self.items = [it for it in self.items if it[1] != slot]

    @rule(k=st.integers(0, 1))
    def toggle_domain(self, k):
        if self.stdev[k] is None:
            self.stdev[k], _ = self.st.mock_domain(self.ioas[k])   # 2 KiB offsets are fine with it
        else:
            self.st.ioctl(uapi.IOMMU_DESTROY, uapi.iommu_destroy(size=8, id=self.stdev[k]))
            self.stdev[k] = None

    @rule(slot=st.integers(0, SLOTS - 1), pages=st.integers(1, 3))
    def pin(self, slot, pages):
        area = self.areas[0].get(slot)
        if area is None:
            with_err = errno.ENOENT
        else:
            mid, first, last, length, _ = area
            with_err = errno.ENOENT if pages > last - first + 1 else 0
        try:
            item = self.st.access_pages(self.afd, self.iova(slot), pages * PAGE)
        except KernelErr as e:
            assert e.errno == with_err != 0
            return
        assert with_err == 0
        SEEN["pin"] += 1
        self.items.append((item, slot, mid, first, first + pages - 1))

    @precondition(lambda self: self.items)
    @rule(data=st.data())
    def unpin(self, data):
        it = data.draw(st.sampled_from(self.items))
        assert self.st.destroy_access_pages(self.afd, it[0]) == 0
        self.items.remove(it)
        assert self.st.destroy_access_pages(self.afd, it[0]) == errno.ENOENT

    # -- invariants ----------------------------------------------------------------------------
    @invariant()
    def pins_match_the_shadow(self):
        expected = self.expected_pins()
        SEEN["a page pinned twice"] += max(expected) >= 2
        for p, n in enumerate(expected):
            assert self.st.refs(self.buf + p * PAGE, PAGE, n) == 0, f"page {p}: expected {n} pins"

    @invariant()
    def areas_match(self):
        for k in (0, 1):
            iopt = self.st.h.ctxs[self.st.fd].objects[self.ioas[k]].iopt
            assert sorted(iopt.areas.keys()) == sorted(self.iova(s, a[4]) for s, a in self.areas[k].items())

    def teardown(self):
        self.st.h.close(self.afd)
        assert self.st.teardown_refs() == 0
        assert self.st.refs(self.buf, NPAGES * PAGE, 0) == 0


def test_pins_follow_maps_copies_domains_and_accesses():
    SEEN.clear()
    run_state_machine_as_test(PagesMachine, settings=settings(
        max_examples=150, stateful_step_count=40, deadline=None, derandomize=True,
        suppress_health_check=[HealthCheck.too_slow]))
    for what in ("copy into a domain", "unmap of a pinned area", "a page pinned twice"):
        assert SEEN[what], f"never reached: {what} ({dict(SEEN)})"
