"""SPEC.md section 3: the era table, through the client API and the emulated transport."""
import pytest

from pyiommufd import uapi
from pyiommufd.client import Iommufd, VfioDevice, VfioGroup, emulated
from pyiommufd.system import System


def place(profile, order, iommu="intel"):
    """Attach the devices in ``order`` to one IOAS; returns [(hwpt id, enforce_cc)] and pt ids."""
    emu = emulated(System.simple(iommu, devices={"gpu": False, "nic": True}), profile)
    t = emu.transport
    ifd = Iommufd(t)
    ioas = ifd.ioas_alloc()
    ioas.map(uapi.MOCK_APERTURE_START, 0x2000)   # inside every driver's aperture, the mock's too
    pts = {}
    for name in order:
        if emu.profile.vfio_cdev:
            d = VfioDevice(t, emu.cdev_path(name))
            d.bind(ifd)
            pts[name] = d.attach(ioas.id)
        else:
            ifd.vfio_ioas(uapi.IOMMU_VFIO_IOAS_SET, ioas.id)
            g = VfioGroup(t, emu.group_path(name))
            g.set_container(ifd)
            g.get_device_fd(name)
    ctx = emu.host.ctxs[ifd.fd]
    hwpts = sorted((o.id, o.enforce_cc) for o in ctx.objects.values() if o.type == "hwpt_paging")
    return hwpts, pts


@pytest.mark.parametrize("profile", ["linux-6.2", "linux-6.6", "linux-6.6.y"])
@pytest.mark.parametrize("order", [("gpu", "nic"), ("nic", "gpu")])
def test_e1_e2_two_domains_either_order(profile, order):
    hwpts, _ = place(profile, order)
    assert len(hwpts) == 2
    assert sorted(cc for _, cc in hwpts) == [False, True]


@pytest.mark.parametrize("profile", ["linux-6.7", "linux-6.12"])
def test_e3_noncc_first_shares_one_noncc_domain(profile):
    hwpts, pts = place(profile, ("gpu", "nic"))
    assert hwpts == [(pts["gpu"], False)]
    assert pts["nic"] == pts["gpu"]


@pytest.mark.parametrize("profile", ["linux-6.7", "linux-6.12"])
def test_e3_cc_first_gives_two(profile):
    hwpts, pts = place(profile, ("nic", "gpu"))
    assert len(hwpts) == 2
    assert dict(hwpts)[pts["nic"]] is True and dict(hwpts)[pts["gpu"]] is False


@pytest.mark.parametrize("order", [("gpu", "nic"), ("nic", "gpu")])
def test_amd_one_cc_domain(order):
    hwpts, _ = place("linux-6.12", order, iommu="amd")
    assert len(hwpts) == 1 and hwpts[0][1] is True


@pytest.mark.parametrize("iommu", ["virtio", "mock", "smmuv3"])
def test_never_cc_drivers_share_one_noncc_domain(iommu):
    hwpts, _ = place("linux-6.12", ("nic", "gpu"), iommu=iommu)
    assert hwpts and all(cc is False for _, cc in hwpts) and len(hwpts) == 1


def test_smmuv3_cc_from_6_13_for_canwbs_masters():
    from pyiommufd.system import DeviceDesc, Unit
    system = System("smmuv3", (Unit("smmu0"),), (DeviceDesc("a", "smmu0", "ga", canwbs=True, cdev=0),
                                                 DeviceDesc("b", "smmu0", "gb", canwbs=False, cdev=1)))
    for profile, want in (("linux-6.12", [False]), ("linux-6.13", [False, True])):
        emu = emulated(system, profile)
        ifd = Iommufd(emu.transport)
        ioas = ifd.ioas_alloc()
        for n in ("a", "b"):
            d = VfioDevice(emu.transport, emu.cdev_path(n))
            d.bind(ifd)
            d.attach(ioas.id)
        ctx = emu.host.ctxs[ifd.fd]
        assert sorted(o.enforce_cc for o in ctx.objects.values() if o.type == "hwpt_paging") == want


def test_pre_6_6_has_no_cdev_and_no_hwpt_alloc():
    import errno
    emu = emulated(System.simple(devices={"nic": True}), "linux-6.2")
    with pytest.raises(OSError) as e:
        VfioDevice(emu.transport, emu.cdev_path("nic"))
    assert e.value.errno == errno.ENOENT
    ifd = Iommufd(emu.transport)
    ioas = ifd.ioas_alloc()
    with pytest.raises(OSError) as e:
        ifd.hwpt_alloc(0, ioas.id)
    assert e.value.errno == errno.ENOTTY
