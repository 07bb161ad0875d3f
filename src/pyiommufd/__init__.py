"""pyiommufd: drive Linux iommufd from Python, on a real host or against an executable
model of iommufd, its IOMMU drivers and KVM for every kernel era (see README.md)."""
__version__ = "0.1.0"
