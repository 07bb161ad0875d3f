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
