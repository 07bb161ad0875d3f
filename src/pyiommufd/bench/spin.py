"""The explorer's model of a scenario, transcribed to Promela and checked by SPIN.

What is transcribed is the abstraction the explorer's symmetry-off key captures for an
auto-domain scenario under an E3 kernel (linux-6.7 and later) on Intel VT-d:

* the IOAS's list of auto HWPTs, oldest first, each with its CC flag (decided at
  allocation: CC iff the allocating device is CC-capable, i.e. its unit has Snoop
  Control) and, through ``where[d]``, its member devices;
* attach (``device_attach`` -> ``auto_get_domain``): walk the list oldest first, the
  device joins the first HWPT that accepts it -- VT-d refuses a device without Snoop
  Control in a CC HWPT (``attach_dev``); a CC-capable device is accepted anywhere; no
  HWPT fits: a new one at the tail, CC iff the device is CC-capable;
* detach (``device_detach`` -> ``hwpt_put``): the last device leaving an auto HWPT
  destroys it and the list closes up;
* hot_unplug = detach + KVM file removal (+ close); the guest is running from then on;
* each event happens once, and only after the events its ``after`` names.

Everything else in the explorer's key is a function of these variables for such a
scenario (the done-sets, the reserved ranges, IOPTE snoop bits, HWPT user counts, KVM's
file list and counters), so SPIN's reachable states and the explorer's are the same set.
One event is one ``d_step`` (one transition); loop counters are ``hidden`` (not in the
state vector) and reset, so SPIN's "states, stored" is the explorer's state count: the
process starts at its ``end:do`` loop, so the initial state is the explorer's root and
there is no extra start or end state to account for.

The property is the hazard ``kvm-coherent-but-noncoherent-dma``: KVM counts no
non-coherent device (no device without CC capability is registered with the VM) while an
attached device's DMA is not forced to snoop (a device without CC capability, or any
device in a non-CC HWPT).  It is an ``assert`` at the end of every event's ``d_step``;
``pan -c0`` keeps searching past violations, so the search is exhaustive and the verdict
is "assertion violated" (hazard reachable) or not.  The initial state cannot violate it:
the stage attaches nothing (checked below).

``promela()`` refuses (ValueError) a scenario outside this abstraction.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time

from ..errors import EnvironmentMissing
from ..profiles import get_profile
from ..scenario import Scenario

HAZARD = "kvm-coherent-but-noncoherent-dma"
STAGE_OPS = {"ioas_alloc", "map", "bind", "kvm_add"}
EVENT_OPS = {"attach", "detach", "hot_unplug"}


def _check(sc: Scenario, profile: str) -> tuple[str, dict]:
    """The scenario fits the transcription: returns (ioas name, {device: in KVM at start})."""
    p = get_profile(profile)
    why = []
    if sc.system.iommu != "intel":
        why.append(f"iommu is {sc.system.iommu!r}, the transcription models Intel VT-d")
    if not (p.era == "E3" and p.cc_at_alloc and not p.upgrade_on_attach and p.intel_driver_checks
            and p.kvm_tdp_zap and p.vfio_cdev and not p.want_cc_flag):
        why.append(f"profile {p.name} is not an E3 kernel (CC at allocation, no upgrade, TDP zap)")
    groups = [d.group for d in sc.system.devices]
    if len(set(groups)) != len(groups):
        why.append("devices share an iommu_group")
    ioas = [s.args.get("as") for s in sc.steps if s.op == "ioas_alloc"]
    if len(ioas) != 1:
        why.append("the stage must allocate exactly one IOAS")
    bound, in_kvm = set(), {}
    for s in sc.steps:
        if s.op not in STAGE_OPS:
            why.append(f"step {s.index}: op {s.op!r} (the stage may only {', '.join(sorted(STAGE_OPS))})")
        elif s.op == "bind":
            bound.add(s.args["device"])
        elif s.op == "kvm_add":
            in_kvm[s.args["device"]] = True
    if not sc.system.kvm and in_kvm:
        why.append("kvm_add without a VM")
    attach, leave = {}, {}
    for e in sc.events:
        d = e.args.get("device")
        if e.op not in EVENT_OPS:
            why.append(f"event {e.index}: op {e.op!r} (events may only be {', '.join(sorted(EVENT_OPS))})")
            continue
        if d not in bound:
            why.append(f"event {e.index}: {d} is not bound by the stage")
        if e.op == "attach":
            if e.args.get("pt") != (ioas[0] if ioas else None) or set(e.args) - {"device", "pt"}:
                why.append(f"event {e.index}: attach must name the IOAS and nothing else")
            if d in attach:
                why.append(f"event {e.index}: {d} attached twice")
            attach[d] = e
        else:
            if d in leave:
                why.append(f"event {e.index}: {d} leaves twice")
            leave[d] = e
    for d, e in leave.items():
        if d not in attach or attach[d].label not in e.after:
            why.append(f"event {e.index}: {e.op} of {d} must come after the attach of {d}")
    if not why:
        why += _attach_failures(sc, profile)
    if why:
        raise ValueError(f"{sc.source}: not expressible in the Promela transcription: " + "; ".join(why))
    return ioas[0], {d.name: in_kvm.get(d.name, False) for d in sc.system.devices}


def _attach_failures(sc: Scenario, profile: str) -> list[str]:
    """The transcription has no failing attach.  What could make one fail whatever the order -- a
    stage mapping on a range an attach reserves (the MSI window, past the domain's aperture) --
    shows when each attach runs alone right after the stage, on the emulator."""
    from ..runner import Vmm
    base = Vmm(sc, profile)
    for step in sc.steps:
        base.apply(step)
    out = []
    for e in sc.events:
        if e.op == "attach":
            r = base.clone().apply(e)
            if not r["ok"]:
                out.append(f"event {e.index}: attach of {e.args['device']} fails ({r['errno']}: {r['detail']})")
    return out


def promela(sc: Scenario, profile: str | None = None) -> str:
    """The Promela model of ``sc`` under ``profile`` (default: the scenario's)."""
    profile = profile or sc.profile
    _, in_kvm = _check(sc, profile)
    units = {u.name: u for u in sc.system.units}
    devs = [d.name for d in sc.system.devices]
    idx = {n: i for i, n in enumerate(devs)}
    cap = {d.name: units[d.unit].snoop_control for d in sc.system.devices}
    n, ne = len(devs), len(sc.events)
    by_label: dict[str, list[int]] = {}
    for i, e in enumerate(sc.events):
        by_label.setdefault(e.label, []).append(i)

    # hazard: no KVM-registered device without CC capability, and an attached device not forced to snoop
    kvm_noncoherent = " || ".join(f"!gone[{idx[d]}]" for d in devs if not cap[d] and in_kvm[d]) or "0"
    exposed = " || ".join(f"where[{idx[d]}] != 0" if not cap[d]
                          else f"(where[{idx[d]}] != 0 && !cc[where[{idx[d]}] - 1])" for d in devs)
    out = [f"/* {sc.name}: generated by pyiommufd.bench.spin from {os.path.basename(sc.source)}, profile {profile}.",
           "   Devices (index: name, CC-capable): " + ", ".join(f"{idx[d]}: {d} {int(cap[d])}" for d in devs) + ".",
           "   where[d]: 0 = not attached, k = in the k-th auto HWPT of the IOAS (oldest first);",
           "   cc[k-1]: that HWPT enforces cache coherency; gone[d]: d was hot-unplugged (its file left KVM).",
           "   In KVM at the start: " + (", ".join(d for d in devs if in_kvm[d]) or "none") + ". */",
           f"#define NDEV {n}",
           f"#define NEV {ne}",
           "byte where[NDEV];",
           "bit cc[NDEV];",
           "byte nhwpt;",
           "bit gone[NDEV];",
           "bit done[NEV];",
           "bit running;            /* the guest runs (a hot_unplug happened): KVM's sptes_present */",
           "hidden byte i, j;",
           "hidden byte haz;",
           "",
           "inline hazard_check() {",
           f"  haz = !({kvm_noncoherent}) && ({exposed});" if sc.system.kvm
           else "  haz = 0;   /* no VM: nothing to be wrong about */",
           "  assert(!haz);",
           "  haz = 0",
           "}",
           "",
           "inline attach(d, capable) {",
           "  /* auto_get_domain: oldest auto HWPT first; VT-d refuses a device without SC in a CC HWPT */",
           "  i = 0;",
           "  do",
           "  :: i < nhwpt && (capable || !cc[i]) -> break",
           "  :: i < nhwpt && !(capable || !cc[i]) -> i++",
           "  :: i >= nhwpt -> cc[i] = capable; nhwpt++; break   /* a new HWPT at the tail: CC iff capable */",
           "  od;",
           "  where[d] = i + 1;",
           "  i = 0",
           "}",
           "",
           "inline detach(d) {",
           "  /* hwpt_put: an auto HWPT dies with its last device and the list closes up */",
           "  i = where[d];",
           "  where[d] = 0;",
           "  j = 0;",
           "  do",
           "  :: j < NDEV && where[j] != i -> j++",
           "  :: j < NDEV && where[j] == i -> break",
           "  :: j >= NDEV ->",
           "     j = i;",
           "     do",
           "     :: j < nhwpt -> cc[j - 1] = cc[j]; j++",
           "     :: j >= nhwpt -> break",
           "     od;",
           "     nhwpt--; cc[nhwpt] = 0;",
           "     j = 0;",
           "     do",
           "     :: j < NDEV -> if :: where[j] > i -> where[j]-- :: else -> skip fi; j++",
           "     :: j >= NDEV -> break",
           "     od;",
           "     break",
           "  od;",
           "  i = 0; j = 0",
           "}",
           "",
           "init {",
           "  end: do"]
    for i, e in enumerate(sc.events):
        d = e.args["device"]
        guard = [f"!done[{i}]"]
        for a in e.after:
            guard.append("(" + " || ".join(f"done[{k}]" for k in by_label[a]) + ")")
        if e.op == "attach":
            body = f"attach({idx[d]}, {int(cap[d])})"
        elif e.op == "detach":
            body = f"detach({idx[d]})"
        else:
            body = f"detach({idx[d]}); gone[{idx[d]}] = 1; running = 1"
        out.append(f"  :: d_step {{ {' && '.join(guard)} -> done[{i}] = 1; {body}; hazard_check() }}"
                   f"   /* {e.op} {d} */")
    out += ["  od", "}", ""]
    return "\n".join(out)


# -- running SPIN -------------------------------------------------------------------------
def missing_tools() -> list[str]:
    """The tools ``run_spin`` needs that are not on PATH."""
    return [t for t in ("spin", "gcc") if shutil.which(t) is None]


def _timed(cmd: list[str], cwd: str) -> tuple[float, float, str]:
    """Run ``cmd``; (wall seconds, CPU seconds of it and its children, stdout).  A failure is the
    tool's (spin, gcc), reported as EnvironmentMissing (CLI exit 3) with its message."""
    before = os.times()
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = os.times()
    cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    if r.returncode != 0:
        raise EnvironmentMissing(f"{' '.join(cmd)} exited {r.returncode}: {(r.stderr or r.stdout).strip()[:500]}")
    return wall, cpu, r.stdout


def parse_pan(out: str) -> dict:
    """The figures of a ``pan`` run: states stored / matched, transitions, errors, depth."""
    def num(pattern: str) -> int | None:
        m = re.search(pattern, out)
        return int(m.group(1)) if m else None
    return {"states": num(r"(\d+) states, stored"), "matched": num(r"(\d+) states, matched"),
            "transitions": num(r"(\d+) transitions \(= stored\+matched\)"), "errors": num(r"errors: (\d+)"),
            "depth": num(r"depth reached (\d+)"), "assertion_violated": "assertion violated" in out}


def run_spin(sc: Scenario, profile: str | None = None, workdir: str | None = None) -> dict:
    """Generate the model, ``spin -a``, ``gcc -O2`` the verifier, run it exhaustively (``-c0``: go on
    past assertion violations).  Times (wall and CPU) per phase and in total, pan's counts, and
    the verdict: which hazard kinds are reachable (the one property checked, see the module doc)."""
    text = promela(sc, profile)
    with tempfile.TemporaryDirectory(prefix="pyiommufd-spin-", dir=workdir) as d:
        pml = os.path.join(d, "model.pml")
        with open(pml, "w") as f:
            f.write(text)
        phases = {}
        phases["generate"] = _timed(["spin", "-a", "model.pml"], d)
        phases["compile"] = _timed(["gcc", "-O2", "-o", "pan", "pan.c"], d)
        phases["verify"] = _timed(["./pan", "-c0", "-n"], d)
    pan = parse_pan(phases["verify"][2])
    if pan["states"] is None:
        raise EnvironmentMissing(f"could not read pan's output (a SPIN other than 6.x?):\n{phases['verify'][2][:1000]}")
    wall = {k: round(v[0], 4) for k, v in phases.items()}
    cpu = {k: round(v[1], 4) for k, v in phases.items()}
    return {"states": pan["states"], "transitions": pan["transitions"], "hazard_transitions": pan["errors"],
            "depth": pan["depth"], "hazards": [HAZARD] if pan["assertion_violated"] else [],
            "seconds": wall | {"total": round(sum(v[0] for v in phases.values()), 4)},
            "cpu_seconds": cpu | {"total": round(sum(v[1] for v in phases.values()), 4)},
            "promela_lines": text.count("\n") + 1}
