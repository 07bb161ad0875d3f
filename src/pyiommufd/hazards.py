"""Hazard detectors: pure functions over the emulated host's state (SPEC.md section 7).

Each detector yields ``Hazard``s identified by (kind, subject); the runner reports a
hazard at the first step where its identity appears.  ``confirmed`` says whether every link
of the behaviour behind it was read in the kernel source at the tag its detector names (True),
or part of it is inferred (False).  None is observed on hardware with KVM (no machine here has
KVM); the detail says so where SPEC.md section 7 asks for it.
"""
from __future__ import annotations

from dataclasses import dataclass

KINDS = ("noncc-device-in-cc-domain", "upgrade-breaks-attached-device", "stale-iopte-after-upgrade",
         "kvm-coherent-but-noncoherent-dma", "stale-memtype-after-flip")


@dataclass(frozen=True)
class Hazard:
    kind: str
    subject: str      # what it is about (device / domain), part of its identity
    detail: str
    confirmed: bool

    @property
    def key(self) -> tuple[str, str]:
        return self.kind, self.subject


def _attached(host) -> list:
    """(device name, driver domain) for every device whose group sits in a domain: ``detect`` reads it once
    and hands it to every detector."""
    return [(name, g.domain) for g in host.groups.values() if g.domain is not None for name in g.devices]


def _hwpt_id(host, domain) -> str:
    for ctx in host.ctxs.values():
        for o in ctx.objects.values():
            if getattr(o, "domain", None) is domain:
                return f"HWPT {o.id}"
    return f"domain #{domain.serial}"


def noncc_device_in_cc_domain(host, attached):
    for name, dom in attached:
        target = dom.parent if dom.kind == "nested" else dom
        if target.enforce_cc and not host.driver.capable_enforce_cc(host.devices[name]):
            yield Hazard("noncc-device-in-cc-domain", name,
                         f"{name} (no CC capability) is attached to {_hwpt_id(host, dom)}, which enforces CC: "
                         "its page-table format is wrong for the device", True)


def upgrade_breaks_attached_device(host, attached):
    for name, dom in attached:
        if name in dom.upgraded_over:
            yield Hazard("upgrade-breaks-attached-device", name,
                         f"{_hwpt_id(host, dom)} was switched to enforce CC while {name}, which cannot, "
                         "was attached", True)


def stale_iopte_after_upgrade(host, attached):
    seen = set()
    for _, dom in attached:
        if dom.serial in seen:
            continue
        seen.add(dom.serial)
        n = dom.stale_ptes()
        if n:
            yield Hazard("stale-iopte-after-upgrade", f"domain#{dom.serial}",
                         f"{_hwpt_id(host, dom)} claims to enforce CC but {n} mapping(s) were written before "
                         "the upgrade without the snoop bit", True)
    for ctx in host.ctxs.values():   # also user HWPTs with no device attached right now
        for o in ctx.objects.values():
            dom = getattr(o, "domain", None)
            if dom is not None and dom.serial not in seen and dom.stale_ptes():
                seen.add(dom.serial)
                yield Hazard("stale-iopte-after-upgrade", f"domain#{dom.serial}",
                             f"HWPT {o.id} claims to enforce CC but {dom.stale_ptes()} mapping(s) lack the snoop bit",
                             True)


def kvm_coherent_but_noncoherent_dma(host, attached):
    """Confirmed in source, Debian 6.12.117 (docs/kernel-notes-drivers-kvm.md section 10.1): E3 lets a
    CC-capable device share a non-CC domain (iommufd_hwpt_paging_alloc's rule; VT-d
    prepare_domain_attach_device refuses only the other way), while kvm_vfio_update_coherency asks
    vfio_file_enforced_coherent, i.e. device_iommu_capable(ENFORCE_CACHE_COHERENCY), not the domain;
    with no non-coherent file left the count drops to 0 and kvm_emulate_wbinvd_noskip skips WBINVD."""
    kvm = host.kvm
    if kvm is None or kvm.wbinvd_emulated:
        return
    for name, dom in attached:
        if not host.driver.forces_snoop(dom, host.devices[name]):
            cap = host.driver.capable_enforce_cc(host.devices[name])
            why = ("KVM looks at the device's CC capability, not at its domain"
                   if cap else "the device is not registered with KVM's kvm-vfio device")
            yield Hazard("kvm-coherent-but-noncoherent-dma", name,
                         f"KVM counts no non-coherent DMA, but {name} sits in {_hwpt_id(host, dom)} which does not "
                         f"force snooping: guest WBINVD is a no-op ({why}; read in source, 6.12.117, "
                         "not observed on hardware)", True)


def stale_memtype_after_flip(host, attached):
    kvm = host.kvm
    if kvm is not None and kvm.memtype_stale:
        yield Hazard("stale-memtype-after-flip", "kvm",
                     f"non-coherent DMA count went {kvm.memtype_stale} while the guest ran, and this KVM does not "
                     "zap the TDP (before v6.7): existing SPTEs keep their old memory type", True)


DETECTORS = (noncc_device_in_cc_domain, upgrade_breaks_attached_device, stale_iopte_after_upgrade,
             kvm_coherent_but_noncoherent_dma, stale_memtype_after_flip)


def detect(host) -> list[Hazard]:
    """Every detector's hazards in this state (each detector takes the attached devices read once)."""
    attached = _attached(host)
    out = []
    for d in DETECTORS:
        out.extend(d(host, attached))
    return out
