"""What a real host says about its IOMMUs and VFIO devices, read from sysfs and debugfs.

Stdlib only (the guest agent imports it).  Every function takes ``root`` (default "/") so tests
can point it at a fake tree.

* ``pci_devices``: every PCI device with its driver, iommu_group, remapping unit and VFIO cdev;
* ``iommu_units``: /sys/class/iommu/*, with Intel's cap/ecap registers and ECAP.SC (bit 7);
* ``iommu_groups``: the members of each group;
* ``page_table``: the Intel debugfs dump of a device's second-level page table
  (/sys/kernel/debug/iommu/intel/<BDF>/domain_translation_struct, CONFIG_INTEL_IOMMU_DEBUGFS),
  reduced to (pages mapped, SNP bits seen in the leaf entries).
"""
from __future__ import annotations

import os

ECAP_SC = 1 << 7      # Intel VT-d ECAP.SC: Snoop Control
PTE_SNP = 1 << 11     # Intel second-level PTE: snoop (DMA_PTE_SNP)
EDU = ("0x1234", "0x11e8")  # QEMU's educational PCI device


def _p(root: str, path: str) -> str:
    return os.path.join(root, path.lstrip("/"))


def read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _link_name(path: str) -> str | None:
    try:
        return os.path.basename(os.readlink(path))
    except OSError:
        return None


def pci_devices(root: str = "/") -> list[dict]:
    """Every PCI device, sorted by BDF: vendor, device, driver, iommu_group, iommu (the
    remapping unit's name under /sys/class/iommu), cdev (vfioN under /dev/vfio/devices)."""
    base = _p(root, "/sys/bus/pci/devices")
    out = []
    for bdf in sorted(os.listdir(base)) if os.path.isdir(base) else []:
        d = os.path.join(base, bdf)
        vfio_dev = os.path.join(d, "vfio-dev")
        # 6.1-6.5 already list vfio-dev/vfioN in sysfs, but only 6.6+ has the char device
        cdevs = [c for c in (sorted(os.listdir(vfio_dev)) if os.path.isdir(vfio_dev) else [])
                 if os.path.exists(_p(root, f"/dev/vfio/devices/{c}"))]
        out.append({"bdf": bdf, "vendor": read(os.path.join(d, "vendor")), "device": read(os.path.join(d, "device")),
                    "driver": _link_name(os.path.join(d, "driver")),
                    "iommu_group": _link_name(os.path.join(d, "iommu_group")),
                    "iommu": _link_name(os.path.join(d, "iommu")),
                    "cdev": cdevs[0] if cdevs else None})
    return out


def edu_devices(root: str = "/") -> list[dict]:
    """QEMU edu devices bound to vfio-pci, sorted by BDF (with a cdev from 6.6; before, only
    their group's /dev/vfio/N)."""
    return [d for d in pci_devices(root) if (d["vendor"], d["device"]) == EDU
            and (d["cdev"] or d["driver"] == "vfio-pci")]


def iommu_units(root: str = "/") -> list[dict]:
    """Remapping units: name, kind ("intel" when intel-iommu/ exists), cap, ecap, snoop_control."""
    base = _p(root, "/sys/class/iommu")
    units = []
    for name in sorted(os.listdir(base)) if os.path.isdir(base) else []:
        cap = read(os.path.join(base, name, "intel-iommu", "cap"))
        ecap = read(os.path.join(base, name, "intel-iommu", "ecap"))
        sc = None
        if ecap is not None:
            try:
                sc = bool(int(ecap, 16) & ECAP_SC)
            except ValueError:
                sc = None
        units.append({"name": name, "kind": "intel" if ecap is not None else "other",
                      "cap": cap, "ecap": ecap, "snoop_control": sc})
    return units


def iommu_groups(root: str = "/") -> dict[str, list[str]]:
    base = _p(root, "/sys/kernel/iommu_groups")
    groups = {}
    for g in sorted(os.listdir(base), key=lambda x: (len(x), x)) if os.path.isdir(base) else []:
        devs = os.path.join(base, g, "devices")
        groups[g] = sorted(os.listdir(devs)) if os.path.isdir(devs) else []
    return groups


def parse_page_table(text: str | None) -> tuple[int, list[bool]] | None:
    """(pages, sorted SNP values of the leaves) from a domain_translation_struct dump; None when
    there is no dump or no present leaf.

    Data lines are "0x<iova pfn> |\\t<PML5E>\\t<PML4E>\\t<PDPE>[\\t<PDE>[\\t<PTE>]]"; the last
    entry is the leaf, and how many entries the line has gives its level (5: 4 KiB, 4: 2 MiB,
    3: 1 GiB) -- drivers/iommu/intel/debugfs.c dump_page_info (6.12)."""
    if not text:
        return None
    pages, snp = 0, set()
    for line in text.splitlines():
        pfn, bar, entries = line.partition("|")
        if not bar or not pfn.strip().startswith("0x"):
            continue
        fields = entries.split()
        if not fields:
            continue
        leaf = int(fields[-1], 16)
        pages += 512 ** max(0, 5 - len(fields))
        snp.add(bool(leaf & PTE_SNP))
    return (pages, sorted(snp)) if pages else None


def page_table(bdf: str, root: str = "/", unit: str | None = None) -> tuple[int, list[bool]] | None:
    """The device's page table from its debugfs dump (6.12); on releases without one, walked in
    RAM through /dev/mem (devmem.py) when the device's remapping *unit* is given."""
    text = read(_p(root, f"/sys/kernel/debug/iommu/intel/{bdf}/domain_translation_struct"))
    if text is None and unit and root == "/" and os.path.isdir("/sys/kernel/debug/iommu/intel"):
        from .devmem import page_table as walk
        return walk(bdf, unit)
    return parse_page_table(text)


def cc_of(pt: tuple[int, list[bool]] | None) -> list | None:
    """The ``[pages, cc]`` observation: cc True/False when every leaf agrees, "mixed" otherwise."""
    if pt is None:
        return None
    pages, snp = pt
    return [pages, snp[0] if len(snp) == 1 else "mixed"]
