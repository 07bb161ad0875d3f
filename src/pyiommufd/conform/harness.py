"""Conformance: the same scenarios on the emulator (linux-6.12) and on real Linux 6.12 in QEMU,
diffed step by step.

One boot per configuration runs every scenario that fits it (see ``fits``); the guest agent
(``agent.py``) prints one JSON line per scenario.  The host plays the very same scenarios through
the very same ``runner.Vmm`` on the default emulated machine, and ``observe.diff`` names the first
step where the two disagree (result/errno, returned id, detail, domain sharing, page-table
contents and CC).  A difference that matches a documented QEMU artifact (``ARTIFACTS``, see
docs/conformance.md) is "explained"; any other makes ``pyiommufd conform`` exit 1.
"""
from __future__ import annotations

import json
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import IoctlError
from . import observe
from .corpus import Item

PROFILE = "linux-6.12"


@dataclass(frozen=True)
class Config:
    """One VM: QEMU's intel-iommu with snoop-control on/off (None: no IOMMU, selftest mock),
    ``n_devices`` edu devices on the root bus (a group each) or behind a PCI bridge (one group)."""
    name: str
    snoop_control: bool | None
    n_devices: int
    behind_bridge: bool
    summary: str

    def boot_kwargs(self) -> dict:
        return {"snoop_control": self.snoop_control, "n_devices": self.n_devices,
                "behind_bridge": self.behind_bridge}


CONFIGS = {c.name: c for c in (
    Config("snoop-on", True, 3, False, "intel-iommu snoop-control=on, 3 edu on the root bus (a group each)"),
    Config("snoop-off", False, 3, False, "intel-iommu snoop-control=off, 3 edu on the root bus (a group each)"),
    Config("bridge", True, 3, True, "intel-iommu snoop-control=on, 3 edu behind a pci-bridge (one group)"),
    Config("mock", None, 0, False, "no IOMMU (iommufd selftest mock): IOAS-only scenarios"),
)}


@dataclass(frozen=True)
class Artifact:
    """A documented difference caused by QEMU rather than by the model (docs/conformance.md)."""
    key: str
    configs: tuple[str, ...]
    op: str | None
    field: str
    explanation: str

    def matches(self, config: str, d: dict) -> bool:
        return config in self.configs and (self.op is None or d.get("op") == self.op) and d.get("field") == self.field


ARTIFACTS: tuple[Artifact, ...] = ()


# -- fitting ----------------------------------------------------------------------------------------
def fits(sc, config: Config) -> str | None:
    """None if the scenario can run on the configuration, else why not."""
    system = sc.system
    devices = system.devices
    if not sc.steps:
        return "no steps"
    if config.snoop_control is None:
        return None if not devices else "has devices (the mock VM runs IOAS-only scenarios)"
    if system.iommu != "intel":
        return f"iommu {system.iommu} (the VM has Intel VT-d)"
    if len(system.units) != 1:
        return f"{len(system.units)} remapping units (QEMU has one intel-iommu per VM)"
    unit = system.units[0]
    if unit.nesting or unit.dirty_tracking:
        return "unit with nesting/dirty tracking (QEMU's VT-d is in legacy mode)"
    if system.intel_page_table != "second-level":
        return "first-level page table (QEMU's VT-d is in legacy mode: second level)"
    if not devices:
        return None
    if unit.snoop_control != config.snoop_control:
        return f"snoop_control {str(unit.snoop_control).lower()}"
    if len(devices) > config.n_devices:
        return f"{len(devices)} devices > {config.n_devices}"
    groups = {d.group for d in devices}
    if config.behind_bridge and len(groups) != 1:
        return "devices in separate groups (behind the bridge they share one)"
    if not config.behind_bridge and len(groups) != len(devices):
        return "devices share a group (on the root bus each has its own)"
    return None


def parse_item(item: Item):
    import tomllib

    from ..scenario import parse
    return parse(tomllib.loads(item.toml), item.name)


# -- the emulator side ---------------------------------------------------------------------------------
def emulator_pt(vmm) -> dict:
    """Per scenario device: [pages, enforce_cc] of the HWPT its group is attached to, or None."""
    host = vmm.host
    ctx = host.ctxs.get(vmm.iommufd.fd)
    out = {}
    for d in vmm.scenario.system.devices:
        dom = host.groups[d.group].domain
        if dom is None:
            out[d.name] = None
            continue
        table = dom.parent if dom.kind == "nested" else dom
        pages = sum(-(-(last - start + 1) // 4096) for start, (last, _) in table.ptes.items())
        if not pages:
            out[d.name] = None
            continue
        hwpt = next((o for o in (ctx.objects.values() if ctx else ())
                     if getattr(o, "domain", None) is dom), None)
        out[d.name] = [pages, bool(hwpt.enforce_cc if hwpt is not None else dom.enforce_cc)]
    return out


def run_emulated(item: Item, profile: str = PROFILE) -> dict:
    """Play the scenario on the emulator exactly as the agent plays it on the real kernel."""
    from ..runner import Vmm
    out = {"kind": "scenario", "name": item.name, "steps": []}
    try:
        sc = parse_item(item)
        vmm = Vmm(sc, profile)
        tracker = observe.Tracker()
        for step in sc.steps:
            result = vmm.apply(step)
            tracker.update(step, result)
            met = observe.expect_met(step, result, vmm.resolve, profile)
            out["steps"].append(observe.record(step, result, tracker, emulator_pt(vmm), met))
    except Exception:
        out["error"] = traceback.format_exc(limit=6)
    return out


# -- the real side -----------------------------------------------------------------------------------------
def emulated_client_example(config: Config, profile: str = PROFILE) -> list[int]:
    """The README's client example on the emulator, on a system like the configuration's."""
    from ..client import emulated
    from ..system import DeviceDesc, System, Unit
    sc = bool(config.snoop_control)
    group = (lambda i: "bridge") if config.behind_bridge else (lambda i: f"g{i}")
    system = System(units=(Unit("dmar0", sc),), devices=tuple(DeviceDesc(n, "dmar0", group(i), cdev=i)
                                                             for i, n in enumerate(("gpu", "nic"))))
    emu = emulated(system, profile)
    from .agent import client_example
    return client_example(emu.transport, [emu.cdev_path("gpu"), emu.cdev_path("nic")])


def make_job(config: Config, items: list[Item], dma_probe: bool = True, profile: str = PROFILE) -> dict:
    from ..profiles import BUILTIN_PROFILES, get_profile
    job = {"module": "pyiommufd.conform.agent", "mode": "scenarios", "config": config.name,
           "profile": profile, "dma_probe": dma_probe and config.n_devices > 0, "client_example": True,
           "scenarios": [{"name": it.name, "toml": it.toml} for it in items]}
    if profile not in BUILTIN_PROFILES:   # a profile file's: the guest registers the record itself
        job["profile_def"] = get_profile(profile).to_json()
    return job


def parse_agent_output(text: str) -> dict:
    """{"env": ..., "dma": ..., "scenarios": {name: run}} from the agent's JSON lines."""
    res: dict = {"env": None, "dma": None, "example": None, "scenarios": {}}
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        obj = json.loads(line)
        kind = obj.get("kind")
        if kind == "scenario":
            res["scenarios"][obj["name"]] = obj
        elif kind in ("env", "dma", "info", "example"):
            res[kind] = obj
    return res


def boot_config(config: Config, items: list[Item], *, kernel: Path, cache: Path | None, payload: Path,
                dma_probe: bool = True, timeout: float | None = None, profile: str = PROFILE) -> dict:
    from . import qemu
    from .build import build_initramfs
    job = make_job(config, items, dma_probe, profile)
    initramfs = build_initramfs(cache, payload, json.dumps(job))
    t = timeout if timeout is not None else 120 + 3.0 * len(items)
    try:
        r = qemu.run(kernel, initramfs, timeout=t, **config.boot_kwargs())
    except qemu.AgentError:
        raise
    except qemu.BootError:   # a boot that never reached the agent: try once more
        r = qemu.run(kernel, initramfs, timeout=t, **config.boot_kwargs())
    res = parse_agent_output(r.output)
    res.update(seconds=round(r.seconds, 1), rc=r.rc, stderr=r.stderr[-4000:])
    return res


def boot_info(config: Config, *, kernel: Path, cache: Path | None, payload: Path, timeout: float = 180.0) -> dict:
    """Run ``pyiommufd info``'s collection (hostinfo) inside the VM: the real /dev/iommu path.
    The emulator (for the per-profile domain counts) needs nothing beyond the stdlib."""
    from . import qemu
    from .build import build_initramfs
    job = {"module": "pyiommufd.conform.hostinfo", "domain_counts": True}
    initramfs = build_initramfs(cache, payload, json.dumps(job))
    r = qemu.run(kernel, initramfs, timeout=timeout, **config.boot_kwargs())
    res = parse_agent_output(r.output)
    return {"info": (res.get("info") or {}).get("info"), "rc": r.rc, "stderr": r.stderr[-2000:],
            "seconds": round(r.seconds, 1)}


# -- comparison ----------------------------------------------------------------------------------------------
@dataclass
class Outcome:
    scenario: str
    config: str
    status: str                 # agree | differ | artifact | not-run | error
    diff: dict | None = None
    artifact: str | None = None
    not_run_steps: int = 0
    fds_leaked: list = field(default_factory=list)

    def to_json(self) -> dict:
        d = {"scenario": self.scenario, "config": self.config, "status": self.status}
        if self.diff:
            d["diff"] = self.diff
        if self.artifact:
            d["artifact"] = self.artifact
        if self.not_run_steps:
            d["not_run_steps"] = self.not_run_steps
        if self.fds_leaked:
            d["fds_leaked"] = self.fds_leaked
        return d


def compare(name: str, config: str, emu: dict, real: dict | None) -> Outcome:
    if real is None:
        return Outcome(name, config, "not-run", {"field": "missing", "detail": "no output from the guest"})
    not_run = sum(1 for s in real.get("steps", []) if not s.get("run"))
    d = observe.diff(emu, real)
    leaked = real.get("fds_leaked", [])
    if d is None and leaked:
        d = {"step": None, "op": None, "field": "fds_leaked", "emulator": [], "real": leaked}
    if d is None:
        return Outcome(name, config, "agree", not_run_steps=not_run)
    for a in ARTIFACTS:
        if a.matches(config, d):
            return Outcome(name, config, "artifact", d, a.key, not_run, leaked)
    status = "error" if d["field"] == "error" else "differ"
    return Outcome(name, config, status, d, None, not_run, leaked)


def profile_for_release(release: str) -> str:
    """The built-in profile modelling a kernel release ("6.6.9", "6.8.0-rc3")."""
    import re

    from ..profiles import profile_for_kernel
    m = re.match(r"\d+\.\d+(?:\.\d+)?", release)
    if not m:
        raise ValueError(f"kernel release {release!r} is not X.Y[.Z]")
    return profile_for_kernel(m.group(0)).name


def plan(items: list[Item], configs: list[Config]) -> tuple[dict[str, list[Item]], list[dict]]:
    """Which items run on which configuration; items that fit nowhere are listed with why."""
    per: dict[str, list[Item]] = {c.name: [] for c in configs}
    unfit = []
    for it in items:
        try:
            sc = parse_item(it)
        except Exception as e:   # a corpus file that does not load is a bad input
            unfit.append({"scenario": it.name, "why": f"does not load: {e}"})
            continue
        reasons = {}
        for c in configs:
            why = fits(sc, c)
            if why is None:
                per[c.name].append(it)
            else:
                reasons[c.name] = why
        if len(reasons) == len(configs):
            why = next((v for k, v in reasons.items() if CONFIGS.get(k) and CONFIGS[k].snoop_control is not None),
                       next(iter(reasons.values())))
            unfit.append({"scenario": it.name, "why": why})
    return per, unfit


def run_conformance(items: list[Item], configs: list[Config], *, cache: Path | None = None,
                    dma_probe: bool = True, jobs: int = 2, timeout: float | None = None,
                    log=None, keep_runs: bool = False, profile: str | None = None,
                    source: Path | str | None = None) -> dict:
    """Build (or find) the kernel of *source* (a tarball or tree; default Debian's 6.12), boot each
    configuration once with every item that fits it, run the same items on the emulator under
    *profile* (default: the one modelling the kernel's release), compare.  Returns the JSON-able
    result."""
    from .build import build
    log = log or (lambda msg: None)
    t0 = time.monotonic()
    per, unfit = plan(items, configs)
    kb = build(cache, source)
    kernel = kb.image
    profile = profile or profile_for_release(kb.release)
    log(f"Linux {kb.release} from {kb.source}; emulator profile {profile}"
        + (f"; options this release lacks: {', '.join(kb.missing_options)}" if kb.missing_options else ""))
    t_kernel = time.monotonic() - t0
    payload = Path(__file__).resolve().parents[1]
    boots: dict[str, dict] = {}
    active = [c for c in configs if per[c.name]]

    def boot(c: Config) -> tuple[str, dict]:
        log(f"{c.name}: booting with {len(per[c.name])} scenarios")
        try:
            r = boot_config(c, per[c.name], kernel=kernel, cache=cache, payload=payload,
                            dma_probe=dma_probe, timeout=timeout, profile=profile)
        except Exception as e:   # BootError, AgentError: the configuration reports nothing
            r = {"error": f"{type(e).__name__}: {e}", "scenarios": {}, "env": None, "dma": None}
        log(f"{c.name}: done in {r.get('seconds', '?')} s")
        return c.name, r

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        futures = [pool.submit(boot, c) for c in active]
        emu_runs = {it.name: run_emulated(it, profile) for c in active for it in per[c.name]}
        for f in futures:
            name, r = f.result()
            boots[name] = r
    outcomes = []
    for c in active:
        real = boots[c.name]["scenarios"]
        for it in per[c.name]:
            outcomes.append(compare(it.name, c.name, emu_runs[it.name], real.get(it.name)))
    summary = {}
    for c in active:
        mine = [o for o in outcomes if o.config == c.name]
        summary[c.name] = {s: sum(1 for o in mine if o.status == s)
                           for s in ("agree", "differ", "artifact", "error", "not-run")}
        summary[c.name]["scenarios"] = len(mine)
    unexplained = [o for o in outcomes if o.status in ("differ", "error", "not-run")]
    dma = {name: b.get("dma") for name, b in boots.items() if b.get("dma")}
    example = {}
    for c in active:
        real_ex = boots[c.name].get("example")
        if real_ex is not None:
            try:
                emu_ex = emulated_client_example(c, profile)
            except IoctlError as e:   # e.g. a profile without cdevs: the emulator's answer, as data
                emu_ex = f"{type(e).__name__}: {e}"
            example[c.name] = {"emulator": emu_ex, "real": real_ex.get("pts"), "error": real_ex.get("error"),
                               "agree": emu_ex == real_ex.get("pts")}
    # Expectations written in the scenario files that the real kernel contradicts.
    real_expect = [{"scenario": name, "config": c, "step": s["i"], "op": s["op"], "ok": s["ok"],
                    "errno": s["errno"], "id": s["id"]}
                   for c, b in boots.items() for name, run in b["scenarios"].items()
                   for s in run.get("steps", []) if s.get("expect") is False]
    extra = {}
    if keep_runs:   # both sides' step records, for debugging a difference
        extra["step_records"] = {c.name: {it.name: {"emulator": emu_runs[it.name], "real": boots[c.name]["scenarios"].get(it.name)}
                                  for it in per[c.name]} for c in active}
    return {**extra, "profile": profile, "kernel": kb.to_json(), "configs": {c.name: c.summary for c in active},
            "scenarios": len({o.scenario for o in outcomes}), "runs": len(outcomes),
            "summary": summary, "outcomes": [o.to_json() for o in outcomes], "unfit": unfit,
            "boots": {name: {k: b.get(k) for k in ("seconds", "rc", "error", "env")} for name, b in boots.items()},
            "dma": dma, "dma_ok": bool(dma) and all(d.get("ok") for d in dma.values()),
            "client_example": example, "client_example_ok": all(e["agree"] for e in example.values()),
            "real_expect_failures": real_expect, "unexplained": len(unexplained), "seconds": round(time.monotonic() - t0, 1),
            "kernel_seconds": round(t_kernel, 1)}


# -- text report ---------------------------------------------------------------------------------------------
def _cell(o: dict | None) -> str:
    if o is None:
        return "-"
    s = o["status"]
    if s == "agree":
        return "agree"
    if s == "artifact":
        return f"qemu:{o['artifact']}"
    d = o.get("diff") or {}
    return f"{s}@{d.get('step')}:{d.get('field')}"


def text_report(res: dict, *, all_rows: bool = True) -> str:
    configs = list(res["configs"])
    k = res.get("kernel") or {}
    head = [f"Linux {k.get('release', '?')} ({k.get('source', '?')}) against the emulator under {res.get('profile', '?')}"]
    if k.get("missing_options"):
        head.append(f"fragment options this release does not have: {', '.join(k['missing_options'])}")
    by = {(o["scenario"], o["config"]): o for o in res["outcomes"]}
    names = sorted({o["scenario"] for o in res["outcomes"]})
    w = max([len(n) for n in names] + [8])
    cw = [max(len(c), 14) for c in configs]
    lines = ["scenario".ljust(w) + "  " + "  ".join(c.ljust(x) for c, x in zip(configs, cw))]
    lines.append("-" * len(lines[0]))
    for n in names:
        cells = [_cell(by.get((n, c))) for c in configs]
        if not all_rows and all(x in ("agree", "-") for x in cells):
            continue
        lines.append(n.ljust(w) + "  " + "  ".join(x.ljust(y) for x, y in zip(cells, cw)))
    lines.append("")
    lines.append("configuration  scenarios  agree  differ  qemu-artifact  error  not-run  boot")
    for c in configs:
        s = res["summary"][c]
        b = res["boots"].get(c, {})
        lines.append(f"{c:<13}  {s['scenarios']:>9}  {s['agree']:>5}  {s['differ']:>6}  {s['artifact']:>13}  "
                     f"{s['error']:>5}  {s['not-run']:>7}  {b.get('seconds') or b.get('error') or '?'}")
    lines.append(f"{res['scenarios']} distinct scenarios, {res['runs']} runs, "
                 f"{res['unexplained']} unexplained disagreement(s)")
    for name, d in res["dma"].items():
        verdict = "ok" if d.get("ok") else "FAILED"
        lines.append(f"DMA check ({name}, edu {d.get('bdf')}): {verdict} -- 2 KiB copied through IOVA "
                     f"{'yes' if d.get('copied') else 'no'}, blocked after unmap "
                     f"{'yes' if d.get('blocked_after_unmap') else 'no'}"
                     + (f"; {d['error']}" if d.get("error") else ""))
    for name, e in (res.get("client_example") or {}).items():
        lines.append(f"README client example ({name}): emulator pt ids {e['emulator']}, real {e['real']}: "
                     + ("agree" if e["agree"] else f"DIFFER {e.get('error') or ''}"))
    for o in res["outcomes"]:
        if o["status"] in ("differ", "error", "not-run"):
            d = o.get("diff") or {}
            lines.append(f"  {o['config']} {o['scenario']}: step {d.get('step')} {d.get('op') or ''} "
                         f"{d.get('field')}: emulator {d.get('emulator')!r} real {d.get('real')!r}"[:600])
    return "\n".join(head + [""] + lines)
