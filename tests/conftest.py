import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from pyiommufd.client import Iommufd, emulated  # noqa: E402
from pyiommufd.system import DeviceDesc, System, Unit  # noqa: E402

SCENARIOS = ROOT / "src" / "pyiommufd" / "scenarios"


# Intel, mixed Snoop Control: nic on an SC unit with nesting and dirty tracking, gpu on a
# non-SC unit, and two devices behind a PCIe-to-PCI bridge sharing one iommu group.
MIXED_SYSTEM = System(
    iommu="intel",
    units=(Unit("dmar-sc", snoop_control=True, nesting=True, dirty_tracking=True),
           Unit("dmar-nosc", snoop_control=False),
           Unit("dmar-br", snoop_control=True)),
    devices=(DeviceDesc("nic", "dmar-sc", "g-nic", cdev=0),
             DeviceDesc("gpu", "dmar-nosc", "g-gpu", cdev=1),
             DeviceDesc("ssd0", "dmar-br", "g-bridge", cdev=2),
             DeviceDesc("ssd1", "dmar-br", "g-bridge", cdev=3)))


def scenario_files():
    return sorted(p for p in SCENARIOS.rglob("*.toml"))


@pytest.fixture
def mixed():
    """Factory: an emulated Intel machine with a non-SC 'gpu' and an SC 'nic', opened iommufd + IOAS."""
    def make(profile="linux-6.12", iommu="intel", kvm=False):
        emu = emulated(System.simple(iommu, devices={"gpu": False, "nic": True}, kvm=kvm), profile)
        ifd = Iommufd(emu.transport)
        return emu, ifd, ifd.ioas_alloc()
    return make
