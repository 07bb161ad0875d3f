"""A device's VT-d second-level page table, walked in RAM through /dev/mem (guest side, stdlib).

Releases before 6.12 have no per-device ``domain_translation_struct`` in debugfs, and 6.6's global
dump crashes the guest while a device is bound but not attached (SPEC.md 11).  This walks what
that dump walks, in legacy (non-scalable) mode, which is what QEMU 7.2's intel-iommu runs:
RTADDR_REG (read from debugfs ``iommu_regset``, so no MMIO access here) -> root entry of the bus ->
context entry of devfn (``SLPTPTR`` and ``AW``) -> the page table.  drivers/iommu/intel/iommu.h
(6.2-6.12): root/context entry layout, ``DMA_PTE_SNP`` (bit 11), ``DMA_PTE_LARGE_PAGE`` (bit 7);
the kernel needs CONFIG_DEVMEM=y and STRICT_DEVMEM off.

The result has the shape of ``sysfs.parse_page_table``: (pages, sorted SNP values of the leaves).
"""
from __future__ import annotations

import os
import re
import struct

REGSET = "/sys/kernel/debug/iommu/intel/iommu_regset"
PTE_READ, PTE_WRITE, PTE_LARGE, PTE_SNP = 1 << 0, 1 << 1, 1 << 7, 1 << 11
ADDR_MASK = ((1 << 52) - 1) & ~0xFFF


def root_table_addresses(regset: str) -> dict[str, int]:
    """{unit name: root table physical address} from debugfs iommu_regset text (RTADDR_REG;
    its low 12 bits hold the translation-table mode, 0 = legacy)."""
    out: dict[str, int] = {}
    unit = None
    for line in regset.splitlines():
        m = re.match(r"IOMMU: (\S+) Register Base Address", line)
        if m:
            unit = m.group(1)
            continue
        fields = line.split()
        if unit and len(fields) == 3 and fields[0] == "RTADDR":
            value = int(fields[2], 16)
            if value & 0xC00:
                raise ValueError(f"{unit}: RTADDR {value:#x} is not in legacy mode")
            out[unit] = value & ADDR_MASK
    return out


def walk(read, table: int, level: int) -> tuple[int, set[bool]]:
    """(4 KiB pages mapped, SNP values of the leaves) under *table* at *level* (1 = PTE)."""
    pages, snp = 0, set()
    raw = read(table, 4096)
    for (pte,) in struct.iter_unpack("<Q", raw):
        if not pte & (PTE_READ | PTE_WRITE):
            continue
        if level == 1 or pte & PTE_LARGE:
            pages += 512 ** (level - 1)
            snp.add(bool(pte & PTE_SNP))
        else:
            p, s = walk(read, pte & ADDR_MASK, level - 1)
            pages += p
            snp |= s
    return pages, snp


def device_table(read, root_table: int, bdf: str) -> tuple[int, list[bool]] | None:
    """The walk for PCI device *bdf* ("0000:00:02.0"); None if it has no context entry or maps
    nothing."""
    m = re.fullmatch(r"(?:[0-9a-f]{4}:)?([0-9a-f]{2}):([0-9a-f]{2})\.([0-7])", bdf.lower())
    if not m:
        raise ValueError(f"not a PCI address: {bdf!r}")
    bus, dev, fn = int(m[1], 16), int(m[2], 16), int(m[3], 16)
    lo, _ = struct.unpack("<QQ", read(root_table + 16 * bus, 16))
    if not lo & 1:
        return None
    ctx_lo, ctx_hi = struct.unpack("<QQ", read((lo & ADDR_MASK) + 16 * ((dev << 3) | fn), 16))
    if not ctx_lo & 1 or (ctx_lo >> 2) & 3 > 1:   # not present, or pass-through (TT 2)
        return None
    levels = (ctx_hi & 7) + 2                  # AW: 1 = 39-bit 3-level, 2 = 48-bit 4-level
    pages, snp = walk(read, ctx_lo & ADDR_MASK, levels)
    return (pages, sorted(snp)) if pages else None


def page_table(bdf: str, unit: str) -> tuple[int, list[bool]] | None:
    """device_table() on this machine, for *bdf* behind remapping unit *unit* ("dmar0")."""
    with open(REGSET) as f:
        roots = root_table_addresses(f.read())
    if unit not in roots:
        return None
    fd = os.open("/dev/mem", os.O_RDONLY | os.O_SYNC)
    try:
        return device_table(lambda addr, n: os.pread(fd, n, addr), roots[unit], bdf)
    finally:
        os.close(fd)
