"""Human output with rich: each a pure function of a result dict, printed to a Console."""
from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table


def _mark(v) -> str:
    return {True: "[green]yes[/]", False: "[red]no[/]", None: ""}.get(v, str(v))


def run_report(res: dict, console: Console) -> None:
    console.print(f"[bold]{res['scenario']}[/] under [cyan]{res['profile']}[/]")
    t = Table("#", "op", "args", "result", "id", "expect", "new hazards", box=None, pad_edge=False)
    for s in res["steps"]:
        args = " ".join(f"{k}={v:#x}" if isinstance(v, int) and not isinstance(v, bool) and v > 4096 else f"{k}={v}"
                        for k, v in s.get("args", {}).items())
        result = "[green]ok[/]" if s["ok"] else f"[red]{s['errno']}[/]"
        if s.get("detail") and isinstance(s["detail"], dict) and "coherent" in s["detail"]:
            result += " coherent" if s["detail"]["coherent"] else " [yellow]non-coherent[/]"
        exp = {None: "", True: "[green]met[/]", False: "[bold red]FAILED[/]"}[s.get("expect_met")]
        hz = ", ".join(h["kind"] for h in s["hazards_new"])
        t.add_row(str(s["index"]), s["op"], args, result, "" if s["id"] is None else str(s["id"]), exp,
                  f"[yellow]{hz}[/]" if hz else "")
    console.print(t)
    f = res["final"]
    d = Table("HWPT", "IOAS", "auto", "enforce CC", "devices", "mappings", title="Domains at the end", box=None)
    for h in f["hwpts"]:
        d.add_row(str(h["id"]), str(h["ioas"]), _mark(h["auto"]), _mark(h["enforce_cc"]),
                  ", ".join(h["devices"]) or "-", str(h.get("mappings", "")))
    if not f["hwpts"]:
        d.add_row("-", "-", "", "", "", "")
    console.print(d)
    k = f["kvm"]
    if k.get("present", True):
        console.print(f"KVM: non-coherent devices {k['noncoherent_devices']}, WBINVD emulated "
                      f"{_mark(k['wbinvd_emulated'])}")
    if f["hazards"]:
        for h in f["hazards"]:
            tag = "" if h.get("confirmed", True) else " [dim](inferred from source)[/]"
            still = "" if h.get("present", True) else " [dim](no longer present)[/]"
            console.print(f"[bold yellow]hazard[/] {h['kind']} at step {h['step']}: {escape(h['detail'])}{tag}{still}")
    else:
        console.print("No hazards.")
    console.print("[bold green]all expectations met[/]" if res["ok"] else "[bold red]expectations failed[/]")


def profiles_report(profiles, console: Console) -> None:
    t = Table("profile", "era", "kernel", "summary", box=None)
    for p in profiles:
        t.add_row(p.name, p.era, p.kernel or "-", p.summary)
    console.print(t)


def _dc(d: dict) -> str:
    return ", ".join(f"{k} domain{'s' if k != '1' else ''}: {v}" for k, v in d.items()) or "-"


def explore_report(res: dict, console: Console) -> None:
    console.print(f"[bold]explore[/] under [cyan]{res['profile']}[/] (strategy {res.get('strategy', 'kernel-auto')})")
    console.print(f"{res['events']} events, {res['orders']} orders, {res['states']} states "
                  f"({res['states_per_second']:.0f} states/s, {res['seconds']:.2f} s)"
                  + (" [bold red]TRUNCATED[/]" if res["truncated"] else ""))
    eng = res.get("engine")
    if eng:
        console.print(f"engine {eng.get('name')}: {eng['shards']} key shard(s), "
                      f"{eng['states_sent_between_shards']} states sent between shards "
                      f"({eng['bytes_sent_between_shards'] / 1e6:.1f} MB)"
                      + (f", Ray {eng['ray']} with {eng['workers']} CPUs" if eng.get("ray") else ""))
    fp = res.get("fingerprint")
    if fp:
        console.print(f"hash compaction: {fp['bits']}-bit fingerprints; P(some state omitted) <= "
                      f"{fp['omission_probability_bound']:.3g}")
    console.print(f"final domain counts over all orders: {_dc(res['domain_counts'])}")
    dep = "[bold yellow]order-dependent[/]" if res["order_dependent"] else "[green]order-independent[/]"
    console.print(f"result: {dep}; fewest domains in a hazard-free order: {res.get('optimal_domains')}")
    if not res["hazards"]:
        console.print("[green]no hazard in any order[/]")
    for h in res["hazards"]:
        console.print(f"[bold yellow]hazard[/] {h['kind']}: reached in {h['count']} of {res['orders']} orders; "
                      "shortest trace:")
        for i, s in enumerate(h["trace"]):
            args = " ".join(f"{k}={v}" for k, v in s.items() if k != "op")
            console.print(f"    {i + 1}. {s['op']} {escape(args)}")


def compare_report(res: dict, console: Console) -> None:
    t = Table("profile", "orders", "states", "domain counts", "order-dependent", "hazards (orders)",
              "worst order optimal", box=None)
    for name, r in res["profiles"].items():
        if "skipped" in r:
            t.add_row(name, "", "", f"[dim]{escape(r['skipped'])}[/]", "", "", "")
            continue
        hz = ", ".join(f"{h['kind']} ({h['count']})" for h in r["hazards"]) or "[green]none[/]"
        t.add_row(name, str(r["orders"]), str(r["states"]), _dc(r["domain_counts"]),
                  "[yellow]yes[/]" if r["order_dependent"] else "[green]no[/]", hz,
                  _mark(r.get("worst_order_optimal")))
    console.print(t)
    console.print(f"fewest domains with no hazard, over everything compared: {res.get('optimal_domains')}")


_SHORT = {"order-dependent": "order-dep.", "noncc-device-in-cc-domain": "H1", "upgrade-breaks-attached-device": "H2",
          "stale-iopte-after-upgrade": "H3", "kvm-coherent-but-noncoherent-dma": "H4", "stale-memtype-after-flip": "H5",
          "not-domain-minimal": "> min dom."}


def _pct(x) -> str:
    if x is None:
        return "-"
    return "[green]0[/]" if x == 0 else f"[yellow]{100 * x:.0f}%[/]" if x < 1 else "[red]100%[/]"


def trace_text(trace) -> str:
    """A trace (event dicts) on one line: 'attach gpu0, attach nic0, hot_unplug gpu0'."""
    return ", ".join(f"{t['op']} {t.get('device', '')}".strip() for t in trace)


def sweep_report(res: dict, console: Console, details: bool = True) -> None:
    from ..sweep import FAILURES, read_off_sentence
    b = res["bound"]
    console.print(f"[bold]sweep[/]: {b['systems']} systems up to {b['max_devices']} devices and {b['max_units']} "
                  f"units ({b['with_unplug']} with hot-unplug; {b['labelled_systems']} labelled), "
                  f"{res['states']} states in {res['seconds']:.1f} s ({res['states_per_second']:.0f} states/s, "
                  f"engine {escape(str(res['engine'].get('engine', '')))}){read_off_sentence(res)}")
    t = Table("policy", "systems", *[_SHORT[f] for f in FAILURES], "verdict", box=None, pad_edge=False)
    t.columns[0].no_wrap = True
    for name, p in res["policies"].items():
        verdict = "[bold green]holds[/]" if p["verdict"]["all"] else "[red]fails[/]"
        t.add_row(name, str(p["systems"]) + (f" [dim](+{p['skipped']} skipped)[/]" if p["skipped"] else ""),
                  *[_pct(p["share"][f]) for f in FAILURES], verdict)
    console.print(t)
    console.print("[dim]share of system shapes (each counted once) that are order-dependent, reach hazard H1-H5 "
                  "(SPEC.md section 7: " + ", ".join(f"{v} {k}" for k, v in _SHORT.items() if v.startswith("H"))
                  + ") in some order, or end with more than the minimal domain count in some order; a verdict holds "
                  "when none of these happens on any system[/]")
    for s in res["verdicts"].values():
        console.print("  " + escape(s))
    if res.get("min_domains_violations"):
        console.print(f"[bold red]the minimal-domain bound was beaten[/] {res['min_domains_violations'][:3]}")
    if not details:
        return
    for name, p in res["policies"].items():
        for f, c in p["counterexamples"].items():
            if f == "order-dependent":
                tr = " [dim]vs[/] ".join(
                    f"{escape(trace_text(o['trace']))} -> {o['domains']} dom "
                    f"({', '.join(('CC' if h['enforce_cc'] else 'non-CC') + ':' + '+'.join(h['devices']) for h in o['hwpts']) or 'none'})"
                    for o in c["trace"])
            else:
                tr = escape(trace_text(c["trace"]))
            console.print(f"[cyan]{escape(name)}[/] {f} on [bold]{escape(c['system'])}[/]: {tr}")
