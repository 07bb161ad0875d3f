"""Human output of ``pyiommufd bench`` (rich): a pure function of the bench result dict."""
from __future__ import annotations

from rich.console import Console
from rich.table import Table


def _s(x, unit: str = "s") -> str:
    if x is None:
        return "-"
    return f"{x:.3f} {unit}" if x < 10 else f"{x:.1f} {unit}"


def _met(v) -> str:
    return {True: "[green]met[/]", False: "[red]not met[/]", None: "[dim]not measured[/]"}[v]


def bench_report(res: dict, console: Console) -> None:
    m = res["machine"]
    console.print(f"[bold]pyiommufd bench[/]{' --quick' if res['quick'] else ''}: {m['cpu']}, {m['cpus']} CPUs, "
                  f"Python {m['python']}, load {m['loadavg'][0]} -> {m['loadavg_end'][0]}; "
                  f"times are CPU seconds, best of the repetitions (wall clock in --json)")

    em, ms = res["emulator"], res["map_scaling"]
    t = Table("emulator", "figure", box=None, pad_edge=False)
    t.add_row("ioctl mix (" + " ".join(em["mix"]) + ")",
              f"{em['ioctls_per_cpu_s']:,} ioctls/s CPU ({em['ioctls_per_s']:,}/s wall)")
    for k, v in em.get("us_per_ioctl_by_kind", {}).items():
        t.add_row(f"  {k}", f"{v} us per ioctl")
    if em.get("real_ioctl"):
        t.add_row("an emulated ioctl (the mix) vs a real one", f"{em['us_per_ioctl']} us vs {em['real_ioctl']['us_per_call']} us "
                  f"({em['real_ioctl']['ioctl']}): x{em['emulated_vs_real_ioctl']}")
        if em.get("emulated_floor_vs_real_ioctl") is not None:
            t.add_row("  the emulator's path alone (IOMMU_OPTION get, struct built once) vs the real one",
                      f"x{em['emulated_floor_vs_real_ioctl']}")
    small, large = ms["live"]
    t.add_row(f"map+unmap, {small:,} live mappings", f"{ms['us_per_op'][str(small)]} us per op")
    if res.get("emulate"):
        x = res["emulate"]
        t.add_row("ioctl from C through pyiommufd emulate (IOAS_ALLOC + DESTROY)",
                  f"{x['c_ioctls_per_s']:,}/s: {x['c_us_per_ioctl']} us per ioctl (wall)")
        t.add_row("  the same through the in-process client", f"{x['in_process_us_per_ioctl']} us per ioctl: "
                  f"C path x{x['ratio_c_vs_in_process']}")
    t.add_row(f"map+unmap, {large:,} live mappings", f"{ms['us_per_op'][str(large)]} us per op "
              f"(ratio {ms['ratio']})")
    console.print(t)

    e = Table("scenario", "engine", "states", "transitions", "verdict", "seconds", "states/s", box=None, pad_edge=False)
    for name, r in res["explorer"].items():
        rows = [("explorer (symmetry)", r["explorer_symmetry"]), ("explorer (no symmetry)", r.get("explorer")),
                ("  before issue 14 (reference path)", r.get("explorer_reference")),
                ("naive BFS", r.get("naive")), ("SPIN", r.get("spin"))]
        for label, x in rows:
            if x is None:
                continue
            verdict = ", ".join(x["hazards"]) or "no hazard"
            sps = f"{x['states'] / x['seconds']:,.0f}" if x["seconds"] else "-"
            e.add_row(name, label, f"{x['states']:,}", f"{x.get('transitions', '')}", verdict, _s(x["seconds"]), sps)
        if r.get("spin"):
            p = r["spin"]["phases"]
            e.add_row("", "  SPIN phases", "", "", f"spin -a {p['generate']}, gcc -O2 {p['compile']}, "
                      f"pan {p['verify']}", "", "")
            e.add_row("", "  explorer (symmetry) / SPIN", "", "", f"x{r.get('explorer_vs_spin_verify')} of pan alone, "
                      f"x{r.get('explorer_vs_spin_total')} of spin + gcc + pan", "", "")
        if r.get("speedup_vs_reference"):
            e.add_row("", "  explorer (no symmetry) vs before", "", "", f"x{r['speedup_vs_reference']} faster", "", "")
        agree = "[green]agree[/]" if r["states_agree"] and r["verdicts_agree"] else "[red]DISAGREE[/]"
        e.add_row("", f"  counts and verdicts {agree}", "", "", f"symmetry reduction x{r['symmetry_reduction_factor']}",
                  "", "")
    console.print(e)
    b = res.get("explorer_before_issue14")
    if b and "skipped" in b:
        console.print(f"[yellow]the explorer before issue 14 not run:[/] {b['skipped']}")
    elif b:
        console.print(f"the explorer before issue 14 (commit {b['before_commit']}, from git) and now, alternately in "
                      f"this run, symmetry off, {b['scenario']}: {b['seconds']['before']:.3f} s vs "
                      f"{b['seconds']['now']:.3f} s ({b['states_per_s']['before']:,.0f} vs "
                      f"{b['states_per_s']['now']:,.0f} states/s): x{b['speedup']}")
    if res.get("spin_skipped"):
        console.print(f"[yellow]SPIN skipped:[/] {res['spin_skipped']}")

    r = res["ratios"]
    console.print("ratios: " + ", ".join(f"{k} {v}" for k, v in r.items() if v is not None))
    g = Table("goal", "value", "", box=None, pad_edge=False)
    for x in res["goals"]:
        g.add_row(x["goal"], str(x["value"]), _met(x["met"]))
    console.print(g)
    for name, p in res.get("profiles", {}).items():
        console.print(f"[bold]where the time goes: {name}[/] (cProfile)")
        shares = p.get("layers_share_cprofile") or p.get("phases_share_cprofile")
        if shares:
            console.print("  " + ", ".join(f"{k} {v:.0%}" for k, v in shares.items()))
        if p.get("gc_share") is not None:
            console.print(f"  garbage collector: {p['gc_share']:.0%} of the CPU time (same run with gc off)")
        rows = p["top_functions"] if isinstance(p, dict) else p
        for f in rows[:8]:
            console.print(f"  {f['share']:6.1%}  {f['function']}  ({f['calls']:,} calls)")
    console.print(f"[dim]{res['total_wall_seconds']} s in all[/]")
