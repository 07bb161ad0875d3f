"""``--record OUT.toml``: a scenario file that replays what a program did.

Each call the scenario format can express becomes a step with an ``expect`` holding what the
emulator answered, so ``pyiommufd run OUT.toml`` checks the replay gets the same answers, and
``explore`` / ``compare`` can work on it.  What the format lacks (a second /dev/iommu, the group
path's container ioctls, IOMMU_TEST_CMD, ...) is kept as a comment in call order.

The scenario runner plays one /dev/iommu per run: only the calls on the first /dev/iommu the
program opened (and on the devices bound to it) become steps.
"""
from __future__ import annotations

from .. import uapi
from ..tomlout import toml_value
from .trace import decode


class Recorder:
    def __init__(self, system, profile, system_path: str | None = None):
        self.system, self.profile, self.system_path = system, profile, system_path
        self.items: list = []            # dict (a step) or str (a comment)
        self.iommufd = None              # host fd of the first /dev/iommu
        self.files: dict[int, tuple[str, str]] = {}   # host fd -> (path, kind)
        self.names: dict[int, str] = {}  # object id -> name bound with `as`
        self.bound: dict[int, str] = {}  # cdev host fd -> device name while bound
        by_cdev = {f"/dev/vfio/devices/vfio{d.cdev}": d.name for d in system.devices}
        self.cdev_device = by_cdev

    # -- events from the server -----------------------------------------------------------------
    def opened(self, host_fd: int, path: str, kind: str) -> None:
        self.files[host_fd] = (path, kind)
        if kind == "iommufd" and self.iommufd is None:
            self.iommufd = host_fd

    def closed(self, host_fd: int) -> None:
        dev = self.bound.pop(host_fd, None)
        if dev is not None:
            self.items.append({"op": "unbind", "device": dev})
        self.files.pop(host_fd, None)

    def _name(self, obj_id: int):
        return self.names.get(obj_id, obj_id)

    def _comment(self, rec, why: str) -> None:
        res = "ok" if rec["errno"] is None else rec["errno"]
        self.items.append(f"{rec['ioctl']} on {rec['fd_kind']} -> {res} ({why})")

    def ioctl(self, rec: dict) -> None:
        req, fd = rec["request"], rec["host_fd"]
        ok = rec["errno"] is None
        expect = {"ok": True} if ok else {"errno": rec["errno"]}
        host = _Profiled(self.profile)
        cmd = decode(host, req, rec["in"]) or {}
        out = decode(host, req, rec["out"]) if ok else None
        if "hex" in cmd:
            self._comment(rec, "not in the scenario format")
            return
        on_ctx = fd == self.iommufd
        dev = self.cdev_device.get(rec.get("path") or "")
        step = None
        if on_ctx and req == uapi.IOMMU_IOAS_ALLOC:
            step = {"op": "ioas_alloc"}
            if ok:
                self.names[out["out_ioas_id"]] = step["as"] = f"ioas{out['out_ioas_id']}"
        elif on_ctx and req == uapi.IOMMU_IOAS_MAP:
            flags = cmd["flags"]
            iova = cmd["iova"] if flags & uapi.IOMMU_IOAS_MAP_FIXED_IOVA or not ok else out["iova"]
            if not flags & uapi.IOMMU_IOAS_MAP_FIXED_IOVA:
                self.items.append(f"IOAS_MAP without FIXED_IOVA: the kernel chose iova {iova:#x}")
            step = {"op": "map", "ioas": self._name(cmd["ioas_id"]), "iova": iova, "length": cmd["length"],
                    "readable": bool(flags & uapi.IOMMU_IOAS_MAP_READABLE),
                    "writeable": bool(flags & uapi.IOMMU_IOAS_MAP_WRITEABLE)}
        elif on_ctx and req == uapi.IOMMU_IOAS_UNMAP:
            step = {"op": "unmap", "ioas": self._name(cmd["ioas_id"]), "iova": cmd["iova"], "length": cmd["length"]}
        elif on_ctx and req == uapi.IOMMU_DESTROY:
            step = {"op": "destroy", "id": self._name(cmd["id"])}
        elif on_ctx and req == uapi.IOMMU_HWPT_ALLOC and cmd.get("data_type", 0) == 0:
            step = {"op": "hwpt_alloc", "device": self._device(cmd["dev_id"]), "pt": self._name(cmd["pt_id"])}
            flags = [n for n, bit in uapi.HWPT_ALLOC_FLAGS.items() if cmd["flags"] & bit]
            if flags:
                step["flags"] = flags
            if ok:
                self.names[out["out_hwpt_id"]] = step["as"] = f"hwpt{out['out_hwpt_id']}"
        elif on_ctx and req == uapi.IOMMU_GET_HW_INFO:
            step = {"op": "hw_info", "device": self._device(cmd["dev_id"])}
        elif dev is not None and req == uapi.VFIO_DEVICE_BIND_IOMMUFD:
            step = {"op": "bind", "device": dev}
            if ok:
                self.bound[fd] = dev
                self.names[out["out_devid"]] = dev
        elif dev is not None and req == uapi.VFIO_DEVICE_ATTACH_IOMMUFD_PT:
            step = {"op": "attach", "device": dev, "pt": self._name(cmd["pt_id"])}
            if ok and out["pt_id"] in self.names and out["pt_id"] != cmd["pt_id"]:
                expect["pt"] = self.names[out["pt_id"]]     # landed in a HWPT seen before
            elif ok and out["pt_id"] != cmd["pt_id"]:
                self.names[out["pt_id"]] = step["as"] = f"hwpt{out['pt_id']}"
        elif dev is not None and req == uapi.VFIO_DEVICE_DETACH_IOMMUFD_PT:
            step = {"op": "detach", "device": dev}
        if step is None:
            self._comment(rec, "not in the scenario format" if on_ctx or dev else "another file")
            return
        if isinstance(step.get("device"), int):
            self._comment(rec, f"device id {step['device']} is not a device of --system")
            return
        step["expect"] = expect
        self.items.append(step)

    def _device(self, dev_id: int):
        name = self.names.get(dev_id)
        return name if name in {d.name for d in self.system.devices} else (dev_id if dev_id else "")

    # -- output ------------------------------------------------------------------------------------
    def toml(self) -> str:
        s = self.system
        lines = ["# Recorded by pyiommufd emulate" + (f" (system from {self.system_path})" if self.system_path else ""),
                 'name = "recorded"', f'profile = "{self.profile.name}"', "", "[system]",
                 f'iommu = "{s.iommu}"',
                 "units = [" + ", ".join("{ " + f'name = "{u.name}", snoop_control = '
                                         f'{"true" if u.snoop_control else "false"}' + " }" for u in s.units) + "]",
                 f"kvm = {'true' if s.kvm else 'false'}", ""]
        for d in s.devices:
            lines += ["[[devices]]", f'name = "{d.name}"', f'unit = "{d.unit}"', f'group = "{d.group}"', ""]
        for item in self.items:
            if isinstance(item, str):
                lines.append(f"# {item}")
                continue
            lines.append("[[steps]]")
            lines += [f"{k} = {toml_value(v)}" for k, v in item.items()]
        return "\n".join(lines) + "\n"


class _Profiled:
    """What trace.decode needs of a host: its profile."""

    def __init__(self, profile):
        self.profile = profile

