"""``pyiommufd demo``: the seed thread's claims, each answered by running its scenario
under every kernel era."""
from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .runner import run
from .scenario import load

SCENARIOS = Path(__file__).parent / "scenarios"

# (claim as said in the thread, who said it, scenario file)
STORY = [
    ("the first device attached does not want CC (but is compatible with it) so we create a non-CC domain ... "
     "then later we attach a device that does want CC and now we are forced to create a second iommu domain",
     "Jason", "thread/noncc-first.toml"),
    ("If the domain has been non-CC it's perfectly fine for the 2nd device with CC to reuse it.",
     "Kevin", "thread/noncc-first.toml"),
    ("Then you have the reverse problem where the domain will not be CC when it should be.",
     "Jason", "thread/cc-first.toml"),
    ("creating hwpt for dev2 (CC) then later attaching hwpt to dev1 (non-CC) will fail then the user should "
     "create a new hwpt for dev1", "Kevin", "thread/noncc-refused-by-cc-domain.toml"),
    ("A non-cc domain will ask to be upgraded and the driver will let it happen even though it doesn't/can't "
     "fix the existing IOPTEs", "Jason", "thread/upgrade-cannot-fix-iotes.toml"),
    ("AMD just hardwires their IOMMU to always do CC enforcing.", "Jason", "thread/amd-hardwired.toml"),
    ("there is indeed a broken case in KVM which cannot handle dynamic change of coherency due to hotplug",
     "Kevin", "hazards/kvm-hot-unplug.toml"),
]


def _summary(res: dict) -> str:
    f = res["final"]
    doms = len([h for h in f["hwpts"] if h.get("type", "paging") == "paging"])
    cc = "".join("C" if h["enforce_cc"] else "n" for h in f["hwpts"])
    errs = [f"step {s['index']} {s['op']}: {s['errno']}" for s in res["steps"] if not s["ok"]]
    hz = sorted({h["kind"] for h in f["hazards"]})
    parts = [f"{doms} domain{'s' if doms != 1 else ''}" + (f" [{cc}]" if cc else "")]
    if errs:
        parts.append("; ".join(errs))
    if hz:
        parts.append("hazard: " + ", ".join(hz))
    return " | ".join(parts)


def demo(console: Console, as_json: bool = False) -> int:
    results = []
    for claim, who, rel in STORY:
        sc = load(SCENARIOS / rel)
        rows = [(p, run(sc, p)) for p in sc.profiles]
        results.append({"claim": claim, "who": who, "scenario": f"scenarios/{rel}",
                        "profiles": {p: {"summary": _summary(r), "ok": r["ok"]} for p, r in rows}})
        if as_json:
            continue
        console.rule(f"[bold]{who}[/]")
        console.print(f"[italic]\u201c{claim}\u201d[/]")
        console.print(f"[dim]{escape(' '.join(sc.description.split()))}[/]")
        t = Table("profile", "what happens (C = HWPT enforces CC, n = does not)", "expectations", box=None)
        for p, r in rows:
            t.add_row(p, escape(_summary(r)), "[green]met[/]" if r["ok"] else "[red]FAILED[/]")
        console.print(t)
        console.print(f"  run it: [cyan]pyiommufd run scenarios/{rel} --profile {rows[-1][0]}[/]\n")
    ok = all(pr["ok"] for r in results for pr in r["profiles"].values())
    if as_json:
        print(json.dumps({"ok": ok, "claims": results}, indent=2))
    else:
        console.print("[bold green]Every claim reproduced as the scenario expects.[/]" if ok
                      else "[bold red]Some expectations failed.[/]")
    return 0 if ok else 1
