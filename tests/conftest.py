import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from pyiommufd.client import Iommufd, VfioDevice, emulated  # noqa: E402
from pyiommufd.system import System  # noqa: E402

SCENARIOS = ROOT / "src" / "pyiommufd" / "scenarios"


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
