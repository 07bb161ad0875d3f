"""``pyiommufd info``: what this real host has -- VFIO cdevs, iommu groups, remapping units and
their capabilities -- and what domain counts each kernel profile would give for those devices.

* sysfs (``sysfs.py``): devices, groups, units, Intel ECAP.SC from
  /sys/class/iommu/dmarN/intel-iommu/ecap;
* /dev/iommu: each VFIO cdev is bound to a fresh iommufd and asked IOMMU_GET_HW_INFO (ECAP.SC as
  the kernel reports it to user space), then closed again.  No /dev/iommu, or no permission to
  open it, is ``EnvironmentMissing`` (the CLI's exit 3) with what to do;
* domain counts: a ``System`` built from what was found runs on the emulator under every Linux
  profile: one IOAS, every device bound, then attached in every order (up to ``max_orders``);
  the number of HWPTs at the end, min and max over the orders.

Run as a module (``python -m pyiommufd.conform.hostinfo [job.json]``) it prints
``{"kind": "info", "info": ...}``: the conformance VM runs it to test the real path.  It imports
the emulator at module level so the VM's initramfs gets what the domain counts need.
"""
from __future__ import annotations

import itertools
import json
import os
import sys

from ..client import Iommufd, VfioDevice
from ..errors import EnvironmentMissing, IoctlError
from ..kernel import host as _emulator  # noqa: F401  (the domain counts run the emulator)
from ..profiles import PROFILES
from ..runner import Vmm
from ..scenario import parse
from ..transport import RealTransport
from . import sysfs

LINUX_PROFILES = tuple(n for n, p in PROFILES.items() if n.startswith("linux-"))


def _kind(units: list[dict]) -> str | None:
    """The emulator's iommu kind for these units (None: nothing we model)."""
    if any(u["kind"] == "intel" for u in units):
        return "intel"
    names = [u["name"] for u in units]
    if any(n.startswith("ivhd") for n in names):
        return "amd"
    if any("smmu" in n for n in names):
        return "smmuv3"
    return None


def check_iommufd(path: str = "/dev/iommu") -> None:
    """EnvironmentMissing (exit 3) unless ``path`` exists and can be opened read-write."""
    if not os.path.exists(path):
        raise EnvironmentMissing(
            f"{path} does not exist: this kernel has no iommufd (CONFIG_IOMMUFD, Linux 6.2+) or the "
            "module is not loaded (try: modprobe iommufd).  The emulator needs none of this: "
            "pyiommufd run / explore / demo work anywhere.")
    try:
        os.close(os.open(path, os.O_RDWR | os.O_CLOEXEC))
    except PermissionError:
        raise EnvironmentMissing(f"no permission to open {path}: run as root, or give your user access "
                                 f"(e.g. chmod/chgrp {path} and the /dev/vfio/devices/vfio* you use)") from None
    except OSError as e:
        raise EnvironmentMissing(f"cannot open {path}: {e.strerror}") from None


def hw_info_of(cdev_path: str, iommufd_path: str = "/dev/iommu") -> dict:
    """Bind the cdev to a fresh iommufd, IOMMU_GET_HW_INFO, close everything."""
    with RealTransport() as t:
        try:
            ifd = Iommufd(t, iommufd_path)
            dev = VfioDevice(t, cdev_path)
            dev_id = dev.bind(ifd)
            info = ifd.hw_info(dev_id)
        except IoctlError as e:
            return {"error": e.errno_name, "detail": str(e)}
        except OSError as e:   # EBUSY: in use by another process (a running VM)
            return {"error": "E" + (os.strerror(e.errno).upper().replace(" ", "_") if e.errno else "IO"),
                    "detail": f"{cdev_path}: {e.strerror}"}
        out = {"data_type": info.data_type, "capabilities": info.capabilities}
        if info.vtd is not None:
            out.update(cap=hex(info.vtd.cap_reg), ecap=hex(info.vtd.ecap_reg), snoop_control=info.snoop_control)
        return out


def collect(root: str = "/", iommufd_path: str = "/dev/iommu", bind: bool = True) -> dict:
    """Everything ``info`` reports except the domain counts.  Raises EnvironmentMissing when
    there is no usable /dev/iommu."""
    check_iommufd(iommufd_path)
    units = sysfs.iommu_units(root)
    by_unit = {u["name"]: u for u in units}
    devices = []
    for d in sysfs.pci_devices(root):
        if not d["cdev"]:
            continue
        unit = by_unit.get(d["iommu"] or "")
        dev = {"bdf": d["bdf"], "cdev": f"/dev/vfio/devices/{d['cdev']}", "driver": d["driver"],
               "vendor_device": f"{d['vendor']}:{d['device']}", "iommu_group": d["iommu_group"],
               "unit": d["iommu"], "sysfs_snoop_control": unit["snoop_control"] if unit else None}
        if bind:
            dev["hw_info"] = hw_info_of(dev["cdev"], iommufd_path)
        sc = dev.get("hw_info", {}).get("snoop_control")
        dev["cc_capable"] = sc if sc is not None else dev["sysfs_snoop_control"]
        devices.append(dev)
    cdev_dir = os.path.join(root, "dev/vfio/devices")
    return {"iommufd": iommufd_path, "kind": _kind(units), "units": units,
            "groups": {g: m for g, m in sysfs.iommu_groups(root).items()
                       if any(d["iommu_group"] == g for d in devices)},
            "cdevs": sorted(os.listdir(cdev_dir)) if os.path.isdir(cdev_dir) else [],
            "devices": devices}


def system_data(info: dict) -> dict | None:
    """The scenario [system]/[[devices]] tables for what ``collect`` found (None: not modelled)."""
    kind = info.get("kind")
    devices = info.get("devices", [])
    if kind is None or not devices:
        return None
    used = []
    for d in devices:
        if d["unit"] and d["unit"] not in used:
            used.append(d["unit"])
    sc = {d["unit"]: d["cc_capable"] for d in devices}
    units = [{"name": u, "snoop_control": bool(sc.get(u))} if kind == "intel" else {"name": u} for u in used]
    return {"system": {"iommu": kind, "units": units},
            "devices": [{"name": d["bdf"], "unit": d["unit"], "group": f"g{d['iommu_group']}"}
                        for d in devices if d["unit"]]}


def domain_counts(info: dict, profiles: tuple[str, ...] = LINUX_PROFILES, max_orders: int = 720) -> dict:
    """Per profile: min/max number of domains (HWPTs) over attach orders of all devices to one
    IOAS, how many orders were run, and the most attaches that failed in one order."""
    data = system_data(info)
    if data is None:
        return {"skipped": "no VFIO devices behind a modelled IOMMU"}
    names = [d["name"] for d in data["devices"]]
    orders = list(itertools.islice(itertools.permutations(names), max_orders))
    out = {}
    for profile in profiles:
        counts, failed = [], 0
        for order in orders:
            steps = [{"op": "ioas_alloc", "as": "ioas"}] + [{"op": "bind", "device": n} for n in names]
            steps += [{"op": "attach", "device": n, "pt": "ioas"} for n in order]
            sc = parse(dict(data, name="info", steps=steps), "info")
            vmm = Vmm(sc, profile)
            fails = sum(1 for s in sc.steps if not vmm.apply(s)["ok"])
            ctx = vmm.host.ctxs[vmm.iommufd.fd]
            counts.append(sum(1 for o in ctx.objects.values() if o.type == "hwpt_paging"))
            failed = max(failed, fails)
        out[profile] = {"min": min(counts), "max": max(counts), "orders": len(orders),
                        "truncated": len(orders) == max_orders and len(names) > 6, "failed_attaches": failed}
    return out


def info_report(info: dict, console) -> None:
    """``pyiommufd info`` as text on a rich Console (rich is imported here, never in the guest)."""
    from rich.table import Table
    console.print(f"iommufd: {info['iommufd']} (usable); IOMMU kind: {info['kind'] or 'not modelled'}", markup=False)
    t = Table(title="remapping units", title_justify="left")
    for col in ("unit", "kind", "cap", "ecap", "ECAP.SC (sysfs)"):
        t.add_column(col)
    for u in info["units"]:
        sc = u["snoop_control"]
        t.add_row(u["name"], u["kind"], u["cap"] or "-", u["ecap"] or "-", "-" if sc is None else ("yes" if sc else "no"))
    console.print(t)
    t = Table(title="VFIO devices", title_justify="left")
    for col in ("device", "cdev", "group", "unit", "SC (sysfs)", "SC (GET_HW_INFO)", "CC-capable"):
        t.add_column(col)

    def yn(v):
        return "-" if v is None else ("yes" if v else "no")
    for d in info["devices"]:
        hw = d.get("hw_info") or {}
        hw_sc = hw.get("error") or yn(hw.get("snoop_control")) if hw else "not bound"
        t.add_row(d["bdf"], d["cdev"], d["iommu_group"] or "-", d["unit"] or "-", yn(d["sysfs_snoop_control"]),
                  hw_sc, yn(d["cc_capable"]))
    console.print(t)
    if not info["devices"]:
        console.print("no VFIO device cdevs (bind devices to vfio-pci with CONFIG_VFIO_DEVICE_CDEV)", markup=False)
    groups = info.get("groups") or {}
    if groups:
        console.print("iommu groups: " + "; ".join(f"{g}: {', '.join(m)}" for g, m in groups.items()), markup=False)
    counts = info.get("domain_counts")
    if counts and "skipped" not in counts:
        t = Table(title="domains when every device attaches to one IOAS (emulator, all attach orders)",
                  title_justify="left")
        for col in ("profile", "min", "max", "orders", "failed attaches"):
            t.add_column(col)
        for prof, c in counts.items():
            t.add_row(prof, str(c["min"]), str(c["max"]), str(c["orders"]) + ("+" if c["truncated"] else ""),
                      str(c["failed_attaches"]))
        console.print(t)
    elif counts:
        console.print(f"domain counts: {counts['skipped']}", markup=False)


def main(argv: list[str]) -> int:
    job = {}
    if len(argv) > 1:
        with open(argv[1]) as f:
            job = json.load(f)
    try:
        info = collect()
    except EnvironmentMissing as e:
        print(json.dumps({"kind": "info", "error": str(e)}))
        return 3
    if job.get("domain_counts", True):
        info["domain_counts"] = domain_counts(info)
    print(json.dumps({"kind": "info", "info": info}, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
