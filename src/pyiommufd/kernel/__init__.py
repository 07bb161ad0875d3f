"""The emulated kernel: iommufd, its IOMMU drivers, VFIO and KVM, one module per kernel object."""
