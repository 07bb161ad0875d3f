"""Real-kernel conformance harness: build a Linux 6.12 kernel and an initramfs, boot them under
QEMU (TCG) with an emulated Intel IOMMU and edu devices bound to vfio-pci, and collect the JSON a
guest agent prints.  See README.md in this directory."""
