"""The iommufd selftest mock (drivers/iommu/iommufd/selftest.c, 6.12.117): mock_domain_capable
answers ENFORCE_CACHE_COHERENCY false and no test op changes it; no enforce op."""
from __future__ import annotations

from .base import Driver


class MockDriver(Driver):
    name = "mock"
