"""Intel VT-d per era: the aperture of a domain filled before its first attach (57 bits up to
6.11, the unit's 39 on QEMU from 6.12) and mappings without read/write (__domain_mapping EINVAL).
Both were found by `pyiommufd conform --kernel-source` on 6.2.1, 6.6.9, 6.6.87 and 6.8.0
(docs/conformance.md); the errnos asserted here are what those real kernels returned."""
import pytest

from pyiommufd import runner, scenario

HIGH = 0x7FFFFFFFF000    # past QEMU's 39-bit width, inside 57 bits
OLD = ["linux-6.6", "linux-6.6.y", "linux-6.7"]      # have HWPT_ALLOC, aperture narrowed at attach
NEW = ["linux-6.12", "linux-6.13"]


def run(profile, steps, units=None, devices=("a",)):
    doc = {"name": "t", "system": {"iommu": "intel", "units": units or [{"name": "dmar0", "snoop_control": True}]},
           "devices": [{"name": d} for d in devices], "steps": steps}
    res = runner.run(scenario.parse(doc), profile)
    return [(s["op"], s["errno"] if not s["ok"] else "ok") for s in res["steps"]]


def m(iova, length=4096, **kw):
    return {"op": "map", "ioas": "ioas", "iova": iova, "length": length, **kw}


IOAS = {"op": "ioas_alloc", "as": "ioas"}
BIND = {"op": "bind", "device": "a"}


# -- cause 1: aperture -----------------------------------------------------------------------
@pytest.mark.parametrize("profile", OLD + NEW)
def test_hwpt_alloc_over_high_mapping(profile):
    """HWPT_ALLOC fills the domain before any attach: up to 6.11 its aperture is 57 bits, so a
    mapping at 2^47 fits; attaching the device then fails in prepare_domain_attach_device."""
    got = run(profile, [IOAS, m(HIGH), BIND,
                        {"op": "hwpt_alloc", "device": "a", "pt": "ioas", "as": "h"},
                        {"op": "attach", "device": "a", "pt": "h"}])
    if profile in OLD:
        assert got[3:] == [("hwpt_alloc", "ok"), ("attach", "EINVAL")]
    else:
        assert got[3] == ("hwpt_alloc", "EADDRINUSE")


@pytest.mark.parametrize("profile", ["linux-6.2"] + OLD + NEW)
def test_auto_domain_attach_over_high_mapping_every_era(profile):
    """An auto domain is attached before it is filled (immediate_attach / 6.2's do_attach): the
    aperture is already the unit's, so the reservation refuses the high mapping in every era."""
    got = run(profile, [IOAS, m(HIGH), BIND, {"op": "attach", "device": "a", "pt": "ioas"}])
    assert got[3] == ("attach", "EADDRINUSE")


@pytest.mark.parametrize("profile", OLD)
def test_user_domain_after_attach_keeps_wide_reservation(profile):
    """After the attach the aperture narrows but the IOAS keeps the reservation made at fill time:
    a MAP past 2^39 reaches intel_iommu_map, which refuses it with EFAULT."""
    got = run(profile, [IOAS, BIND, {"op": "hwpt_alloc", "device": "a", "pt": "ioas", "as": "h"},
                        m(1 << 39), {"op": "unmap", "ioas": "ioas", "iova": 1 << 39, "length": 4096},
                        {"op": "attach", "device": "a", "pt": "h"}, m(1 << 39), m(0x100000)])
    assert got[3:] == [("map", "ok"), ("unmap", "ok"), ("attach", "ok"), ("map", "EFAULT"), ("map", "ok")]


@pytest.mark.parametrize("profile", OLD)
def test_unmap_lowers_max_addr_only_to_the_range_start(profile):
    """intel_iommu_unmap: max_addr = iova of the range that ends at it, so after unmapping the
    page at 2^47 - 4K, max_addr is still past 2^39 and the attach still fails."""
    got = run(profile, [IOAS, m(HIGH), BIND, {"op": "hwpt_alloc", "device": "a", "pt": "ioas", "as": "h"},
                        {"op": "unmap", "ioas": "ioas", "iova": HIGH, "length": 4096},
                        {"op": "attach", "device": "a", "pt": "h"}])
    assert got[4:] == [("unmap", "ok"), ("attach", "EINVAL")]


@pytest.mark.parametrize("profile", NEW)
def test_user_domain_new_era_map_past_aperture_is_reserved(profile):
    got = run(profile, [IOAS, BIND, {"op": "hwpt_alloc", "device": "a", "pt": "ioas", "as": "h"},
                        {"op": "attach", "device": "a", "pt": "h"}, m(1 << 39)])
    assert got[3] == ("attach", "ok") and got[4][1] != "ok" and got[4][1] != "EFAULT"


# -- cause 2: no read/write ------------------------------------------------------------------
NOPROT = {"readable": False, "writeable": False}


@pytest.mark.parametrize("profile", ["linux-6.2", "linux-6.6", "linux-6.7"])
def test_noprot_area_refused_when_a_domain_is_added(profile):
    """MAP without prot is accepted while no domain exists (map_requires_prot off); adding an
    Intel domain then fails in iopt_fill_domain (EINVAL) and the device stays unattached."""
    got = run(profile, [IOAS, m(0x100000, **NOPROT), BIND, {"op": "attach", "device": "a", "pt": "ioas"},
                        {"op": "unmap", "ioas": "ioas", "iova": 0x100000, "length": 4096},
                        {"op": "attach", "device": "a", "pt": "ioas"}])
    assert got[1:] == [("map", "ok"), ("bind", "ok"), ("attach", "EINVAL"), ("unmap", "ok"), ("attach", "ok")]


@pytest.mark.parametrize("profile", ["linux-6.2", "linux-6.6", "linux-6.7"])
def test_noprot_map_into_domain_fails_and_leaves_no_area(profile):
    got = run(profile, [IOAS, BIND, {"op": "attach", "device": "a", "pt": "ioas"}, m(0x100000, **NOPROT),
                        m(0x100000)])
    assert got[2:] == [("attach", "ok"), ("map", "EINVAL"), ("map", "ok")]


@pytest.mark.parametrize("profile", ["linux-6.6", "linux-6.7"])
def test_noprot_area_refused_by_hwpt_alloc(profile):
    got = run(profile, [IOAS, m(0x100000, **NOPROT), BIND,
                        {"op": "hwpt_alloc", "device": "a", "pt": "ioas"}])
    assert got[3] == ("hwpt_alloc", "EINVAL")


@pytest.mark.parametrize("profile", ["linux-6.6.y", "linux-6.12"])
def test_noprot_map_refused_at_ioctl(profile):
    """6.6.49+ and 6.12 refuse the MAP itself (iommufd_ioas_map), domain or not."""
    got = run(profile, [IOAS, m(0x100000, **NOPROT)])
    assert got[1] == ("map", "EINVAL")


def test_read_only_or_write_only_is_fine():
    got = run("linux-6.6", [IOAS, BIND, {"op": "attach", "device": "a", "pt": "ioas"},
                            m(0x100000, writeable=False), m(0x200000, readable=False)])
    assert got[3:] == [("map", "ok"), ("map", "ok")]
