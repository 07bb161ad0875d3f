"""What a conformance run records after each step, computed the same way on both sides.

Stdlib only: the guest agent imports this.  A step record is a small JSON object::

    {"i": 3, "op": "attach", "run": true, "ok": true, "errno": null, "id": 4,
     "detail": null, "share": [["a", "b"]], "pt": {"a": [2, true], "b": [2, true]}}

* ``ok`` / ``errno`` / ``id`` / ``detail``: what ``Vmm.apply`` returned (``detail`` only on
  success: on failure the emulator explains itself and the kernel says nothing);
* ``share``: the devices attached after the step, grouped by the pt id their last successful
  attach/replace returned (domain reuse, as user space sees it);
* ``pt``: per device, ``[pages, cc]`` of the I/O page table it translates through -- the number
  of 4 KiB pages mapped and whether they enforce cache coherency (the real side reads the SNP
  bit of the leaf IOPTEs; the emulator reports ``enforce_cc`` of the device's HWPT), or
  ``None`` when the device translates through no page table with mappings.

``diff`` compares two runs step by step and names the first difference.
"""
from __future__ import annotations

# Not run on a real kernel (no KVM here, and the dma op has no real counterpart); the
# emulator still runs them so the state that later steps see is the scenario's.
SKIP_ON_REAL = ("kvm_add", "kvm_del", "dma")
FIELDS = ("errno", "id", "detail", "share", "pt")


class Tracker:
    """The pt id each device was last given by a successful attach/replace (what a VMM holds)."""

    def __init__(self):
        self.pt: dict[str, int] = {}

    def update(self, step, result: dict) -> None:
        if not result["ok"]:
            return
        dev = step.args.get("device")
        if step.op in ("attach", "replace") and result["id"] is not None:
            self.pt[dev] = result["id"]
        elif step.op in ("detach", "unbind", "hot_unplug"):
            self.pt.pop(dev, None)

    def sharing(self) -> list[list[str]]:
        by_pt: dict[int, list[str]] = {}
        for dev, pt in self.pt.items():
            by_pt.setdefault(pt, []).append(dev)
        return sorted(sorted(devs) for devs in by_pt.values())


def expect_met(step, result: dict, resolve, profile: str) -> bool | None:
    """The step's ``ok`` / ``errno`` / ``pt`` expectations against this result (None: none
    given).  ``hazards`` and ``domains`` need the emulator's state and are not checked here."""
    from ..uapi import errno_name, errno_value
    exp = step.expect_for(profile)
    if not exp or not ({"ok", "errno", "pt"} & set(exp)):
        return None
    met = True
    if "ok" in exp:
        met &= exp["ok"] == result["ok"]
    if "errno" in exp:
        met &= result["errno"] == errno_name(errno_value(exp["errno"]))
    if "pt" in exp:
        met &= result["id"] == resolve(exp["pt"])
    return bool(met)


def record(step, result: dict, tracker: Tracker, pt: dict, expect: bool | None = None) -> dict:
    rec = {"i": step.index, "op": step.op, "run": True, "ok": result["ok"], "errno": result["errno"],
           "id": result["id"], "detail": result["detail"] if result["ok"] else None,
           "share": tracker.sharing(), "pt": pt}
    if expect is not None:
        rec["expect"] = expect
    return rec


def not_run(step) -> dict:
    return {"i": step.index, "op": step.op, "run": False}


def _field(rec: dict, name: str):
    if name == "errno":
        return rec["errno"] if not rec["ok"] else None
    return rec.get(name)


def diff(emu: dict, real: dict) -> dict | None:
    """None if the runs agree, else {"step", "op", "field", "emulator", "real"} for the first
    difference (a run that raised is a difference at the step it reached)."""
    es, rs = emu.get("steps", []), real.get("steps", [])
    for e, r in zip(es, rs):
        if e["i"] != r["i"]:
            return {"step": e["i"], "op": e["op"], "field": "index", "emulator": e["i"], "real": r["i"]}
        if not (e.get("run") and r.get("run")):
            continue
        for name in FIELDS:
            ev, rv = _field(e, name), _field(r, name)
            if ev != rv:
                return {"step": e["i"], "op": e["op"], "field": name, "emulator": ev, "real": rv}
    for side, run in (("emulator", emu), ("real", real)):
        if run.get("error"):
            at = len(run.get("steps", []))
            return {"step": at, "op": None, "field": "error", "emulator": emu.get("error"),
                    "real": real.get("error"), "side": side}
    if len(es) != len(rs):
        n = min(len(es), len(rs))
        return {"step": n, "op": None, "field": "length", "emulator": len(es), "real": len(rs)}
    return None
