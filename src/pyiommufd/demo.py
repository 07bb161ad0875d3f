"""``pyiommufd demo``: the seed thread's claims, each answered by running its scenario
under every kernel era."""
from __future__ import annotations

import json
import re
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .runner import run
from .scenario import load

SCENARIOS = Path(__file__).parent / "scenarios"

# (claim as said in the thread, who said it, the scenarios that test it).  Each claim has scenarios of its own;
# what the demo prints under a claim is their descriptions without the quote they open with.
STORY = [
    ("the first device attached does not want CC (but is compatible with it) so we create a non-CC domain ... "
     "then later we attach a device that does want CC and now we are forced to create a second iommu domain",
     "Jason", ("thread/does-not-want-cc.toml", "thread/cc-capable-pair.toml")),
    ("If the domain has been non-CC it's perfectly fine for the 2nd device with CC to reuse it.",
     "Kevin", ("thread/noncc-first.toml",)),
    ("Then you have the reverse problem where the domain will not be CC when it should be.",
     "Jason", ("thread/cc-first.toml",)),
    ("creating hwpt for dev2 (CC) then later attaching hwpt to dev1 (non-CC) will fail then the user should "
     "create a new hwpt for dev1", "Kevin", ("thread/noncc-refused-by-cc-domain.toml",)),
    ("A non-cc domain will ask to be upgraded and the driver will let it happen even though it doesn't/can't "
     "fix the existing IOPTEs", "Jason", ("thread/upgrade-cannot-fix-iotes.toml",)),
    ("AMD just hardwires their IOMMU to always do CC enforcing.", "Jason", ("thread/amd-hardwired.toml",)),
    ("there is indeed a broken case in KVM which cannot handle dynamic change of coherency due to hotplug",
     "Kevin", ("hazards/kvm-hot-unplug.toml",)),
]

_OPENING_QUOTE = re.compile(r'^[^:"]{1,40}:\s*"([^"]*)"\s*')


def explanation(sc, claim: str) -> str:
    """A scenario's description on one line, without the quote it opens with when that quote is the claim
    (printed above it); another quote (a reply) stays."""
    text = " ".join(sc.description.split())
    m = _OPENING_QUOTE.match(text)
    return text[m.end():] if m and m.group(1)[:30] in " ".join(claim.split()) else text


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
    for claim, who, rels in STORY:
        parts = [(rel, load(SCENARIOS / rel)) for rel in rels]
        rows = [(p, rel, run(sc, p)) for rel, sc in parts for p in sc.profiles]
        results.append({"claim": claim, "who": who, "scenario": f"scenarios/{rels[0]}",
                        "scenarios": [f"scenarios/{rel}" for rel in rels],
                        "explanation": " ".join(explanation(sc, claim) for _, sc in parts),
                        "profiles": {}})
        for p, rel, r in rows:   # a profile shown for two scenarios of one claim: the second keyed with its name
            key = p if p not in results[-1]["profiles"] else f"{p} ({Path(rel).stem})"
            results[-1]["profiles"][key] = {"summary": _summary(r), "ok": r["ok"], "scenario": f"scenarios/{rel}"}
        if as_json:
            continue
        console.rule(f"[bold]{who}[/]")
        console.print(f"[italic]\u201c{claim}\u201d[/]")
        for rel, sc in parts:
            console.print(f"[dim]{escape(explanation(sc, claim))}[/]")
        t = Table("profile", "what happens (C = HWPT enforces CC, n = does not)", "expectations", box=None)
        for p, rel, r in rows:
            where = f" [dim]({Path(rel).stem})[/]" if len(parts) > 1 else ""
            t.add_row(p + where, escape(_summary(r)), "[green]met[/]" if r["ok"] else "[red]FAILED[/]")
        console.print(t)
        for rel, sc in parts:
            console.print(f"  run it: [cyan]pyiommufd run scenarios/{rel} --profile {sc.profiles[-1]}[/]")
        console.print()
    ok = all(pr["ok"] for r in results for pr in r["profiles"].values())
    if as_json:
        print(json.dumps({"ok": ok, "claims": results}, indent=2))
    else:
        console.print("[bold green]Every claim reproduced as the scenario expects.[/]" if ok
                      else "[bold red]Some expectations failed.[/]")
    return 0 if ok else 1
