"""KVM's view of DMA coherency: the kvm-vfio device and x86's non-coherent DMA count.

* virt/kvm/vfio.c (6.12.117): userspace adds VFIO files (groups, and cdevs from 6.6);
  after every add, delete and release ``kvm_vfio_update_coherency`` recomputes "is any
  file not enforced-coherent" from ``vfio_file_enforced_coherent`` -- the device
  *capability* (cdev: device_iommu_capable(ENFORCE_CACHE_COHERENCY); group: every device
  of it), not the HWPT the device sits in -- and calls kvm_arch_(un)register_noncoherent_dma
  when the answer changes.
* arch/x86/kvm (6.12.117): while noncoherent_dma_count > 0 guest WBINVD is emulated
  (kvm_emulate_wbinvd_noskip) and guest PAT is honoured in EPT memory types (vmx_get_mt_mask).
* 362ff6dca541 "KVM: x86/mmu: Zap KVM TDP when noncoherent DMA assignment starts/stops"
  (v6.7): the 0<->1 transitions zap the TDP so memory types are recomputed; before it
  existing SPTEs keep the memory type they were built with.

SPTEs exist once the guest runs; the model takes a ``dma``, ``hotplug`` or ``hot_unplug``
event as proof that it does (devices added before the first of them were added at boot).
"""
from __future__ import annotations

import errno

from .err import KernelErr


class Kvm:
    __slots__ = ("files", "noncoherent", "noncoherent_dma_count", "sptes_present", "memtype_stale", "zaps")
    _fixed = ("files",)   # never rebound (snapshot.fixed_slots)

    def __init__(self):
        self.files: list = []             # kvm_vfio->file_list (file objects)
        self.noncoherent = False          # kv->noncoherent
        self.noncoherent_dma_count = 0    # kvm->arch.noncoherent_dma_count
        self.sptes_present = False
        self.memtype_stale: str | None = None  # "0->1" / "1->0": SPTEs kept a memory type from before a flip
        self.zaps = 0

    @property
    def wbinvd_emulated(self) -> bool:
        """need_emulate_wbinvd / kvm_arch_has_noncoherent_dma."""
        return self.noncoherent_dma_count > 0

    def snapshot(self):
        return (tuple([f.snapshot()[:2] for f in self.files]), self.noncoherent, self.noncoherent_dma_count,
                self.sptes_present, self.memtype_stale)


def id_of(f) -> tuple:
    """A file as KVM's list shows it (kind and name); Kvm.snapshot inlines it."""
    return f.snapshot()[:2]


def enforced_coherent(host, f) -> bool:
    """vfio_file_enforced_coherent: the capability, not the domain."""
    if f.kind == "group":
        return all(host.driver.capable_enforce_cc(host.devices[d]) for d in host.groups[f.group].devices)
    return host.driver.capable_enforce_cc(f.dev)


def noncoherent_devices(host, kvm: Kvm) -> int:
    """Devices behind KVM's files that KVM counts as non-coherent."""
    names = set()
    for f in kvm.files:
        devs = host.groups[f.group].devices if f.kind == "group" else [f.dev.name]
        names.update(d for d in devs if not host.driver.capable_enforce_cc(host.devices[d]))
    return len(names)


def update_coherency(host, kvm: Kvm) -> None:
    """kvm_vfio_update_coherency + kvm_arch_(un)register_noncoherent_dma."""
    noncoherent = any(not enforced_coherent(host, f) for f in kvm.files)
    if noncoherent == kvm.noncoherent:
        return
    kvm.noncoherent = noncoherent
    before = kvm.noncoherent_dma_count
    kvm.noncoherent_dma_count += 1 if noncoherent else -1
    if (before == 0) != (kvm.noncoherent_dma_count == 0):
        if host.profile.kvm_tdp_zap:
            kvm.zaps += 1               # kvm_noncoherent_dma_assignment_start_or_stop
            kvm.memtype_stale = None
        elif kvm.sptes_present:
            kvm.memtype_stale = f"{before}->{kvm.noncoherent_dma_count}"


def file_add(host, kvm: Kvm, f) -> None:
    """kvm_vfio_file_add: not a VFIO file -> EINVAL, already added -> EEXIST."""
    if f.kind not in ("group", "cdev") or (f.kind == "cdev" and not host.profile.kvm_vfio_cdev):
        raise KernelErr(errno.EINVAL, "not a VFIO group or device file")
    if any(g is f for g in kvm.files):
        raise KernelErr(errno.EEXIST, "file already added")
    kvm.files.append(f)
    f.refs += 1   # KVM holds the file (fget)
    update_coherency(host, kvm)


def file_del(host, kvm: Kvm, f) -> None:
    """kvm_vfio_file_del: ENOENT if not there; fput may release the file (unbinding it)."""
    for i, g in enumerate(kvm.files):
        if g is f:
            del kvm.files[i]
            update_coherency(host, kvm)
            host.put_file(f)
            return
    raise KernelErr(errno.ENOENT, "file not added to KVM")
