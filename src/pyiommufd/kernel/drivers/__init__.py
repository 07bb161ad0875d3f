"""IOMMU drivers of the emulated kernel, by the name a scenario's ``[system] iommu`` uses."""
from .amd import AmdDriver
from .intel import IntelDriver
from .mock import MockDriver
from .smmuv3 import Smmuv3Driver
from .virtio import VirtioDriver

DRIVERS = {d.name: d for d in (IntelDriver, AmdDriver, Smmuv3Driver, VirtioDriver, MockDriver)}
