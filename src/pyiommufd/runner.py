"""The runner: plays a scenario as a VMM would, through the client API and a transport.

How ops map to kernel calls (DESIGN.md "How the runner plays a VMM"):

* one /dev/iommu fd per run; a device's cdev is opened by its first bind, attach,
  detach or kvm_add, closed by unbind (closing unbinds; a later bind gets a new dev id);
  a device that is not bound is named to iommufd commands by dev id 0.
* Kernels without VFIO cdevs (profiles with ``vfio_cdev`` off, 6.2-6.5): ``bind`` opens
  the device's VFIO group; ``attach`` to an IOAS sets it as the compat IOAS
  (IOMMU_VFIO_IOAS SET), sets the iommufd as the group's container if not yet, and opens
  the device (VFIO_GROUP_GET_DEVICE_FD: bind + auto-domain attach in the kernel); ``detach``,
  ``unbind`` and ``hot_unplug`` close the device fd; ``kvm_add`` adds the group file.
  ``hwpt_alloc`` and ``replace`` go to the kernel and get its ENOTTY; an ``attach`` to a
  name bound to a HWPT, or of an already-open device, is the cdev ATTACH ioctl on the device
  fd, which that kernel does not know (ENOTTY).
* ``hotplug`` = bind + kvm_add (with a VM); ``hot_unplug`` = detach + kvm_del + unbind.
"""
from __future__ import annotations

import io
import pickle

from . import uapi
from .client import Iommufd, Ioas, VfioDevice, VfioGroup, emulated
from .errors import IoctlError
from .hazards import detect
from .scenario import Scenario, Step


_SHARED: list = []   # the objects the clone in progress passes by reference


def _shared(i: int):
    return _SHARED[i]


def _dumps(obj, shared: list) -> bytes:
    """Serialize through pickle (C speed), with ``shared`` objects passed by reference.
    A per-pickler dispatch table reduces just their types, so nothing else pays a callback."""
    index = {id(o): i for i, o in enumerate(shared)}

    def reduce(o):
        i = index.get(id(o))
        if i is None:
            return o.__reduce_ex__(pickle.HIGHEST_PROTOCOL)
        return _shared, (i,)

    buf = io.BytesIO()
    p = pickle.Pickler(buf, pickle.HIGHEST_PROTOCOL)
    p.dispatch_table = {type(o): reduce for o in shared}
    p.dump(obj)
    return buf.getvalue()


def _loads(data: bytes, shared: list):
    _SHARED[:] = shared
    try:
        return pickle.loads(data)
    finally:
        _SHARED.clear()


def _clone(obj, shared: list):
    """Deep copy through pickle, ``shared`` objects passed by reference."""
    return _loads(_dumps(obj, shared), shared)


class Frozen:
    """A Vmm serialized once (``Vmm.freeze``); each ``thaw`` is a new, independent copy.
    Cheaper than ``clone`` per copy when one state has several successors."""

    __slots__ = ("data", "shared")

    def __init__(self, data: bytes, shared: list):
        self.data, self.shared = data, shared

    def thaw(self) -> "Vmm":
        return _loads(self.data, self.shared)


class Vmm:
    """The user-space side of one run: open files and names bound by ``as``."""

    __slots__ = ("scenario", "emu", "profile", "t", "containers", "iommufd", "names", "kinds", "cdevs", "groups",
                 "devfds", "in_kvm", "kvm_users", "seen_hazards", "strategy", "us", "_cc_cache")
    _fixed = __slots__   # every one set here and never rebound (snapshot.fixed_slots): the containers change in place

    def __init__(self, scenario: Scenario, profile: str, strategy: str = "kernel-auto", machine=None):
        """``machine`` provides ``transport``, ``profile``, ``cdev_path(name)``, ``group_path(name)``
        and ``host`` (the emulated kernel, or None on a real one); default: a new emulated machine."""
        from .userspace import get_strategy
        self.scenario = scenario
        self.emu = machine if machine is not None else emulated(scenario.system, profile)
        self.profile = self.emu.profile
        self.t = self.emu.transport
        self.containers: set[str] = set()      # group paths whose container is set
        self.iommufd = Iommufd(self.t)
        self.names: dict[str, int] = {}
        self.kinds: dict[str, str] = {}        # name -> "ioas" | "hwpt" | "device"
        self.cdevs: dict[str, VfioDevice] = {}
        self.groups: dict[str, VfioGroup] = {}
        self.devfds: dict[str, int] = {}        # group path: device fds
        self.in_kvm: set[str] = set()
        self.kvm_users: dict[int, set[str]] = {}   # KVM file fd -> devices it stands for
        self.seen_hazards: dict[tuple, int] = {}
        self.strategy = get_strategy(strategy, self.profile)
        self.us: dict = {}                      # the strategy's own bookkeeping
        self._cc_cache: dict[str, bool] = {}

    def clone(self) -> "Vmm":
        """A copy to branch from (the explorer's successor states).  Parts no op changes --
        the scenario, the profile, the system description, the strategy, the emulated
        process's scratch memory -- are shared, the rest copied (pickle: C speed)."""
        return _clone(self, self._shared_parts())

    def freeze(self) -> Frozen:
        """This state serialized once, to ``thaw`` copies from (the explorer's successors of one state)."""
        shared = self._shared_parts()
        return Frozen(_dumps(self, shared), shared)

    def _shared_parts(self) -> list:
        shared = [self.scenario, self.profile, self.scenario.system, self.strategy, self.emu.system]
        if self.host is not None:
            shared.append(self.host.mem)
        return shared

    @property
    def host(self):
        return self.emu.host

    # -- helpers --------------------------------------------------------------------
    def resolve(self, ref) -> int:
        return self.names.get(ref, 0) if isinstance(ref, str) else ref

    def dev_id(self, name: str) -> int:
        d = self.cdevs.get(name)
        return d.dev_id or 0 if d is not None else 0

    def cdev(self, name: str) -> VfioDevice:
        if name not in self.cdevs:
            self.cdevs[name] = VfioDevice(self.t, self.emu.cdev_path(name))
        return self.cdevs[name]

    def group(self, name: str) -> VfioGroup:
        g = self.emu.group_path(name)
        if g not in self.groups:
            self.groups[g] = VfioGroup(self.t, g)
        return self.groups[g]

    def cc_capable(self, name: str) -> bool:
        """What a VMM can learn of a device's CC capability: Intel ECAP.SC via IOMMU_GET_HW_INFO;
        drivers without hw_info (AMD enforces always, but does not say so) count as not capable."""
        if name not in self._cc_cache:
            self._cc_cache[name] = bool(self.iommufd.hw_info(self.dev_id(name)).snoop_control)
        return self._cc_cache[name]

    def bind_name(self, step: Step, value: int | None, kind: str) -> None:
        if "as" in step.args:
            self.names[step.args["as"]] = value or 0
            self.kinds[step.args["as"]] = kind

    # -- ops -------------------------------------------------------------------------
    def apply(self, step: Step) -> dict:
        """Run one step; returns {"ok", "errno", "id", "detail"}.  Kernel errors are results."""
        fn = getattr(self, "op_" + step.op)
        try:
            ident, detail = fn(step)
            return {"ok": True, "errno": None, "id": ident, "detail": detail}
        except IoctlError as e:
            if step.op in ("ioas_alloc", "hwpt_alloc", "bind", "attach", "replace", "hotplug"):
                self.bind_name(step, 0, "failed")
            return {"ok": False, "errno": e.errno_name, "id": None, "detail": e.detail or None}

    def op_ioas_alloc(self, s):
        ioas = self.iommufd.ioas_alloc()
        self.bind_name(s, ioas.id, "ioas")
        return ioas.id, None

    def op_map(self, s):
        a = s.args
        iova = Ioas(self.iommufd, self.resolve(a["ioas"])).map(
            a["iova"], a["length"], readable=a.get("readable", True), writeable=a.get("writeable", True))
        return None, {"iova": iova}

    def op_unmap(self, s):
        a = s.args
        n = Ioas(self.iommufd, self.resolve(a["ioas"])).unmap(a["iova"], a["length"])
        return None, {"unmapped": n}

    def op_hwpt_alloc(self, s):
        a = s.args
        flags = 0
        for f in a.get("flags", []):
            flags |= uapi.HWPT_ALLOC_FLAGS[f]
        if a.get("want_cc"):
            flags |= uapi.IOMMU_HWPT_ALLOC_PROPOSED_WANT_CC
        hwpt = self.iommufd.hwpt_alloc(self.dev_id(a["device"]), self.resolve(a["pt"]), flags)
        self.bind_name(s, hwpt, "hwpt")
        return hwpt, None

    def op_bind(self, s):
        name = s.args["device"]
        if not self.profile.vfio_cdev:
            self.group(name)
            self.bind_name(s, None, "device")
            return None, {"path": "vfio-group"}
        dev_id = self.cdev(name).bind(self.iommufd)
        self.bind_name(s, dev_id, "device")
        return dev_id, None

    def op_attach(self, s):
        name, pt = s.args["device"], self.resolve(s.args["pt"])
        if not self.profile.vfio_cdev:
            return self._group_attach(s, name, pt)
        if s.op == "attach" and self.kinds.get(s.args["pt"]) == "ioas":
            pt_id = self.strategy.attach(self, name, pt)
        else:
            pt_id = self.cdev(name).attach(pt)
        self.bind_name(s, pt_id, "hwpt")
        return pt_id, None

    def _group_attach(self, s, name, pt):
        if name in self.devfds or self.kinds.get(s.args["pt"]) == "hwpt":
            # the cdev ATTACH ioctl, which pre-6.6 vfio-pci does not know
            fd = self.devfds.get(name) or self.group(name).fd
            self.t.ioctl(fd, uapi.VFIO_DEVICE_ATTACH_IOMMUFD_PT, uapi.vfio_device_attach_iommufd_pt(argsz=12, pt_id=pt))
        self.iommufd.vfio_ioas(uapi.IOMMU_VFIO_IOAS_SET, pt)
        g = self.group(name)
        if g.path not in self.containers:
            g.set_container(self.iommufd)
            self.containers.add(g.path)
        self.devfds[name] = g.get_device_fd(name)
        self.bind_name(s, None, "hwpt")
        return None, {"path": "vfio-group compat IOAS"}

    op_replace = op_attach

    def op_detach(self, s):
        name = s.args["device"]
        if not self.profile.vfio_cdev:
            return self._close_devfd(name)
        self.cdev(name).detach()
        self.strategy.detached(self, name)
        return None, None

    def _close_devfd(self, name):
        fd = self.devfds.pop(name, None)
        if fd is not None:
            self.t.close(fd)
        return None, None

    def op_unbind(self, s):
        name = s.args["device"]
        if not self.profile.vfio_cdev:
            return self._close_devfd(name)
        d = self.cdevs.pop(name, None)
        if d is not None:
            d.close()
        return None, None

    def op_destroy(self, s):
        self.iommufd.destroy(self.resolve(s.args["id"]))
        return None, None

    def _kvm_fd(self, name: str) -> int:
        return self.cdev(name).fd if self.profile.vfio_cdev else self.group(name).fd

    def op_kvm_add(self, s):
        """KVM_DEV_VFIO_FILE_ADD of the device's file.  Before 6.6 that file is the group's: a VMM
        (QEMU) adds it once for the group and deletes it when the group's last device goes."""
        name, fd = s.args["device"], self._kvm_fd(s.args["device"])
        if fd not in self.kvm_users:
            self.t.kvm_file("add", fd)
            self.kvm_users[fd] = set()
        self.kvm_users[fd].add(name)
        self.in_kvm.add(name)
        return None, None

    def op_kvm_del(self, s):
        name, fd = s.args["device"], self._kvm_fd(s.args["device"])
        users = self.kvm_users.get(fd)
        if users is None or users == {name}:
            self.t.kvm_file("del", fd)     # ENOENT from KVM if it was never added
            self.kvm_users.pop(fd, None)
        else:
            users.discard(name)
        self.in_kvm.discard(name)
        return None, None

    def _guest_running(self) -> None:
        if self.host is not None:
            self.host.guest_running()

    def op_hotplug(self, s):
        self._guest_running()
        ident, _ = self.op_bind(s)
        if self.scenario.system.kvm:
            self.op_kvm_add(s)
        return ident, None

    def op_hot_unplug(self, s):
        self._guest_running()
        name = s.args["device"]
        self.op_detach(s)
        if name in self.in_kvm:
            self.op_kvm_del(s)
        self.op_unbind(s)
        return None, None

    def op_dma(self, s):
        a = s.args
        r = self.t.dma(a["device"], a["iova"], a["length"], a.get("snoop", False))
        return None, r

    def op_hw_info(self, s):
        info = self.iommufd.hw_info(self.dev_id(s.args["device"]))
        d = {"data_type": info.data_type}
        if info.vtd is not None:
            d.update(ecap=hex(info.vtd.ecap_reg), snoop_control=info.snoop_control)
        return None, d

    # -- results -----------------------------------------------------------------------
    def new_hazards(self, index: int) -> tuple[list, list]:
        if self.host is None:
            return [], []
        current = detect(self.host)
        new = []
        for h in current:
            if h.key not in self.seen_hazards:
                self.seen_hazards[h.key] = index
                new.append(h)
        return current, new

    def final(self, hazard_log: list[dict], current) -> dict:
        host = self.host
        ctx = host.ctxs.get(self.iommufd.fd)
        hwpts = []
        if ctx is not None:
            for o in sorted(ctx.objects.values(), key=lambda o: o.id):
                if o.type not in ("hwpt_paging", "hwpt_nested"):
                    continue
                paging = o if o.type == "hwpt_paging" else o.parent
                devs = [d.dev.name for g in ctx.groups.values() if g.hwpt is o for d in g.devices]
                hwpts.append({"id": o.id, "ioas": paging.ioas.id, "enforce_cc": o.enforce_cc,
                              "auto": o.type == "hwpt_paging" and o.auto_domain, "devices": devs,
                              "mappings": len(paging.domain.ptes), "type": o.type.split("_")[1],
                              "stale_iotes": paging.domain.stale_ptes()})
        devices = []
        for name, d in host.devices.items():
            hwpt = None
            if ctx is not None and d.idev_id in ctx.objects:
                ig = ctx.objects[d.idev_id].igroup
                hwpt = ig.hwpt.id if ig.hwpt is not None and ctx.objects[d.idev_id] in ig.devices else None
            devices.append({"name": name, "id": d.idev_id if self.profile.vfio_cdev else None,
                            "cc_capable": host.driver.capable_enforce_cc(d), "hwpt": hwpt,
                            "unit": d.unit, "group": d.group})
        from .kernel.kvm import noncoherent_devices
        kvm = host.kvm
        kvm_json = ({"noncoherent_devices": noncoherent_devices(host, kvm), "wbinvd_emulated": kvm.wbinvd_emulated,
                     "noncoherent_dma_count": kvm.noncoherent_dma_count, "tdp_zaps": kvm.zaps,
                     "memtype_stale": kvm.memtype_stale, "present": True}
                    if kvm else {"noncoherent_devices": 0, "wbinvd_emulated": False, "present": False})
        present = {h.key for h in current}
        hazards = [dict(h, present=(h["kind"], h["subject"]) in present) for h in hazard_log]
        return {"hwpts": hwpts, "devices": devices, "kvm": kvm_json, "hazards": hazards}


def check_expect(exp: dict | None, result: dict, vmm: Vmm, current) -> bool | None:
    if exp is None:
        return None
    ok = True
    if "ok" in exp and exp["ok"] != result["ok"]:
        ok = False
    if "errno" in exp:
        want = uapi.errno_name(uapi.errno_value(exp["errno"]))
        ok &= result["errno"] == want
    if "pt" in exp:
        ok &= result["id"] == vmm.resolve(exp["pt"])
    if "hazards" in exp:  # exactly these kinds are present after the step
        ok &= {h.kind for h in current} == set(exp["hazards"])
    if "domains" in exp:
        ctx = vmm.host.ctxs.get(vmm.iommufd.fd)
        n = sum(1 for o in ctx.objects.values() if o.type == "hwpt_paging") if ctx else 0
        ok &= n == exp["domains"]
    return bool(ok)


def run(scenario: Scenario, profile: str | None = None, strategy: str = "kernel-auto") -> dict:
    """Run every step under ``profile`` (default: the scenario's); the DESIGN.md JSON as a dict."""
    profile = profile or scenario.profile
    vmm = Vmm(scenario, profile, strategy)
    steps, log, all_ok, current = [], [], True, []
    for step in scenario.steps:
        r = vmm.apply(step)
        current, new = vmm.new_hazards(step.index)
        for h in new:
            log.append({"kind": h.kind, "step": step.index, "detail": h.detail, "confirmed": h.confirmed,
                        "subject": h.subject})
        met = check_expect(step.expect_for(profile), r, vmm, current)
        all_ok &= met is not False
        entry = {"index": step.index, "op": step.op, "ok": r["ok"], "errno": r["errno"], "id": r["id"],
                 "expect_met": met,
                 "hazards_new": [{"kind": h.kind, "step": step.index, "detail": h.detail, "confirmed": h.confirmed}
                                 for h in new],
                 "args": step.args}
        if r["detail"] is not None:
            entry["detail"] = r["detail"]
        steps.append(entry)
    return {"scenario": scenario.name, "profile": profile, "strategy": strategy, "ok": bool(all_ok), "steps": steps,
            "final": vmm.final(log, current)}
