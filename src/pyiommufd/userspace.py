"""User-space domain managers: how a VMM places a device that it attaches to an IOAS.

* ``kernel-auto``: VFIO_DEVICE_ATTACH_IOMMUFD_PT with the IOAS id; the kernel's
  auto-domain search decides (oldest auto HWPT first).
* ``qemu-style``: QEMU's iommufd backend (hw/vfio/iommufd.c, iommufd_cdev_autodomains_get,
  9.x/10.x): try each HWPT it made for this IOAS, *newest first* (QLIST_INSERT_HEAD);
  EINVAL means incompatible, try the next; other errors fail; none fits: IOMMU_HWPT_ALLOC
  for this device, attach, insert at the head.  A HWPT left without devices is destroyed
  (iommufd_cdev_autodomains_put).
* ``cc-aware`` (this project's): keep *one* HWPT per IOAS.  While a device without CC
  capability is attached the HWPT is non-CC (CC-capable devices may share it, E3); when
  the last such device leaves, everything moves (replace) into a fresh CC HWPT, so KVM --
  which counts capabilities -- is never told "coherent" while DMA can bypass the caches.
  Capability comes from IOMMU_GET_HW_INFO (Intel ECAP.SC) as a VMM would learn it.

Strategies other than kernel-auto need IOMMU_HWPT_ALLOC and replace (6.6+).
"""
from __future__ import annotations

import errno

from .errors import IoctlError, ScenarioError


class KernelAuto:
    name = "kernel-auto"
    needs_hwpt_alloc = False

    def attach(self, vmm, device: str, ioas_id: int) -> int:
        return vmm.cdev(device).attach(ioas_id)

    def detached(self, vmm, device: str) -> None:
        pass


class QemuStyle:
    name = "qemu-style"
    needs_hwpt_alloc = True

    def _hwpts(self, vmm) -> list[dict]:
        return vmm.us.setdefault("hwpts", [])   # [{"id", "ioas", "devices": [names]}], head first

    def _cc(self, vmm, device: str) -> bool:
        return vmm.cc_capable(device)

    def _owner(self, vmm, device: str):
        return next((h for h in self._hwpts(vmm) if device in h["devices"]), None)

    def _alloc_attach(self, vmm, device: str, ioas_id: int, alloc_dev: str | None = None) -> dict:
        d = vmm.cdev(device)
        hwpt_id = vmm.iommufd.hwpt_alloc(vmm.dev_id(alloc_dev or device), ioas_id)
        try:
            d.attach(hwpt_id)
        except IoctlError:
            vmm.iommufd.destroy(hwpt_id)
            raise
        # CC is reported by no uAPI; the VMM knows the rule: from 6.6 a HWPT allocated for a
        # CC-capable device enforces CC.
        cc = vmm.profile.cc_at_alloc and self._cc(vmm, alloc_dev or device)
        h = {"id": hwpt_id, "ioas": ioas_id, "devices": [device], "cc": cc}
        self._hwpts(vmm).insert(0, h)
        return h

    def _move(self, vmm, device: str, h: dict) -> None:
        old = self._owner(vmm, device)
        vmm.cdev(device).attach(h["id"])   # attach on an attached device is replace
        if old is not None:
            old["devices"].remove(device)
            self._drop_if_empty(vmm, old)
        h["devices"].append(device)

    def _drop_if_empty(self, vmm, h: dict) -> None:
        if not h["devices"]:
            self._hwpts(vmm).remove(h)
            vmm.iommufd.destroy(h["id"])

    def attach(self, vmm, device: str, ioas_id: int) -> int:
        for h in list(self._hwpts(vmm)):
            if h["ioas"] != ioas_id or device in h["devices"]:
                continue
            try:
                self._move(vmm, device, h)
                return h["id"]
            except IoctlError as e:
                if e.errno != errno.EINVAL:
                    raise
        return self._alloc_attach(vmm, device, ioas_id)["id"]

    def detached(self, vmm, device: str) -> None:
        h = self._owner(vmm, device)
        if h is not None:
            h["devices"].remove(device)
            self._drop_if_empty(vmm, h)


class CcAware(QemuStyle):
    name = "cc-aware"

    def attach(self, vmm, device: str, ioas_id: int) -> int:
        if self._cc(vmm, device):   # our one HWPT takes a CC-capable device (a non-CC HWPT under E3)
            return super().attach(vmm, device, ioas_id)
        mine = [h for h in self._hwpts(vmm) if h["ioas"] == ioas_id]
        target = next((h for h in mine if not h["cc"]), None)
        if target is None:
            target = self._alloc_attach(vmm, device, ioas_id)   # allocated for a non-CC device: non-CC
        else:
            self._move(vmm, device, target)
        for h in [h for h in mine if h is not target]:      # consolidate everyone into it
            for other in list(h["devices"]):
                self._move(vmm, other, target)
        return target["id"]

    def detached(self, vmm, device: str) -> None:
        h = self._owner(vmm, device)
        super().detached(vmm, device)
        if h is None or not h["devices"] or self._cc(vmm, device):
            return
        if any(not self._cc(vmm, d) for d in h["devices"]) or h["cc"]:
            return
        # The last non-CC device left a non-CC HWPT: allocate a CC one (for a CC-capable device)
        # and replace everyone into it.  Replace moves a device's whole iommu_group at once, so
        # a group sibling's own replace is then a no-op -- detaching one member first would not
        # work: its siblings keep the group in the old HWPT (EINVAL).
        first = h["devices"][0]
        new = {"id": vmm.iommufd.hwpt_alloc(vmm.dev_id(first), h["ioas"]), "ioas": h["ioas"], "devices": [],
               "cc": vmm.profile.cc_at_alloc and self._cc(vmm, first)}
        self._hwpts(vmm).insert(0, new)
        for d in list(h["devices"]):
            self._move(vmm, d, new)


STRATEGIES = {s.name: s for s in (KernelAuto(), QemuStyle(), CcAware())}


def get_strategy(name: str, profile) -> object:
    s = STRATEGIES.get(name)
    if s is None:
        raise ScenarioError(f"unknown strategy {name!r} (known: {', '.join(STRATEGIES)})")
    if s.needs_hwpt_alloc and not profile.hwpt_alloc:
        raise ScenarioError(f"strategy {name!r} needs IOMMU_HWPT_ALLOC and replace (Linux 6.6+); "
                            f"profile {profile.name} has neither")
    return s
