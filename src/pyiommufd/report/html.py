"""One self-contained HTML page for ``compare --html``: works offline (inline CSS and SVG,
no scripts fetched).  A domain-count chart per profile, the hazard table with traces, and
for small explorations the state graph (Graphviz ``dot`` when installed, else a text list)."""
from __future__ import annotations

import html
import shutil
import subprocess

CSS = """body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f3f3f3}.yes{color:#b35900;font-weight:600}.no{color:#2a7a2a}.muted{color:#777}
.chart{display:flex;flex-wrap:wrap;gap:24px}.card{border:1px solid #ddd;border-radius:6px;padding:8px 12px}
ol.trace{margin:0;padding-left:1.4em}code{background:#f6f6f6;padding:0 3px}.graph svg{max-width:100%;height:auto}"""


def _e(x) -> str:
    return html.escape(str(x))


def _bars(name: str, r: dict) -> str:
    counts = r.get("domain_counts", {})
    total = sum(counts.values()) or 1
    w, bh, gap = 260, 22, 6
    rows = []
    for i, (k, v) in enumerate(counts.items()):
        y = i * (bh + gap)
        width = max(2, int(w * v / total))
        rows.append(f'<rect x="90" y="{y}" width="{width}" height="{bh}" fill="#4a78b5"/>'
                    f'<text x="0" y="{y + 16}">{_e(k)} domain{"s" if k != "1" else ""}</text>'
                    f'<text x="{95 + width}" y="{y + 16}">{v} ({100 * v / total:.0f}%)</text>')
    h = max(1, len(counts)) * (bh + gap)
    svg = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{w + 200}" height="{h}" role="img" '
           f'aria-label="domain counts for {_e(name)}" font-size="12">{"".join(rows)}</svg>')
    dep = '<span class="yes">order-dependent</span>' if r.get("order_dependent") else \
        '<span class="no">order-independent</span>'
    return f'<div class="card"><b>{_e(name)}</b> &mdash; {dep}<br>{svg}</div>'


def _graph(name: str, g: dict) -> str:
    if shutil.which("dot"):
        lines = ["digraph G {", "rankdir=LR; node [shape=box,fontsize=10]; edge [fontsize=9];"]
        for n in g["nodes"]:
            color = ', color="#b35900", penwidth=2' if n["hazards"] else ""
            label = f'{n["domains"]} dom' + ("\\n" + "\\n".join(n["hazards"]) if n["hazards"] else "")
            lines.append(f'n{n["id"]} [label="{label}"{color}];')
        for a, b, lab in g["edges"]:
            lines.append(f'n{a} -> n{b} [label="{lab}"];')
        lines.append("}")
        try:
            svg = subprocess.run(["dot", "-Tsvg"], input="\n".join(lines), capture_output=True, text=True,
                                 timeout=60, check=True).stdout
            svg = svg[svg.find("<svg"):]
            return f'<div class="graph">{svg}</div>'
        except (subprocess.SubprocessError, OSError):
            pass
    items = "".join(f"<li>state {a} &rarr; state {b}: <code>{_e(lab)}</code></li>" for a, b, lab in g["edges"])
    return f'<p class="muted">Graphviz not installed: the state graph as a list.</p><ul>{items}</ul>'


def compare_html(sc, res: dict) -> str:
    profiles = res["profiles"]
    cards = "".join(_bars(n, r) for n, r in profiles.items() if "skipped" not in r)
    rows = []
    for n, r in profiles.items():
        if "skipped" in r:
            rows.append(f'<tr><td>{_e(n)}</td><td colspan="6" class="muted">{_e(r["skipped"])}</td></tr>')
            continue
        hz = "".join(f'<div><b>{_e(h["kind"])}</b> in {h["count"]} of {r["orders"]} orders; shortest trace:'
                     f'<ol class="trace">' + "".join(
                         "<li><code>" + _e(" ".join([t["op"]] + [f"{k}={v}" for k, v in t.items() if k != "op"]))
                         + "</code></li>" for t in h["trace"]) + "</ol></div>" for h in r["hazards"]) \
            or '<span class="no">none</span>'
        dep = '<span class="yes">yes</span>' if r["order_dependent"] else '<span class="no">no</span>'
        rows.append(f"<tr><td>{_e(n)}</td><td>{r['orders']}</td><td>{r['states']}</td>"
                    f"<td>{_e(', '.join(f'{k}: {v}' for k, v in r['domain_counts'].items()))}</td><td>{dep}</td>"
                    f"<td>{_e(r.get('optimal_domains') if r.get('optimal_domains') is not None else 'none: every order has a hazard')}</td><td>{hz}</td></tr>")
    graphs = "".join(f"<h3>{_e(n)}</h3>{_graph(n, r['graph'])}" for n, r in profiles.items() if r.get("graph"))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>pyiommufd compare: {_e(sc.name)}</title>
<style>{CSS}</style></head><body>
<h1>pyiommufd compare: {_e(sc.name)}</h1>
<p>{_e(" ".join(sc.description.split()))}</p>
<p class="muted">Every order of {len(sc.events)} events explored on the emulated kernel.
Fewest domains in a hazard-free order over everything compared: <b>{_e(res.get("optimal_domains"))}</b>.</p>
<h2>Final domain count over all orders</h2><div class="chart">{cards}</div>
<h2>Profiles side by side</h2>
<table><tr><th>profile</th><th>orders</th><th>states</th><th>domain counts</th><th>order-dependent</th>
<th>fewest domains, no hazard</th><th>hazards</th></tr>{"".join(rows)}</table>
<h2>State graphs</h2>{graphs or '<p class="muted">Too many states to draw (more than 200).</p>'}
</body></html>
"""


_FAIL_TITLES = {"order-dependent": "order-dependent", "noncc-device-in-cc-domain": "non-CC device in CC domain",
                "upgrade-breaks-attached-device": "upgrade breaks attached device",
                "stale-iopte-after-upgrade": "stale IOPTE after upgrade",
                "kvm-coherent-but-noncoherent-dma": "KVM coherent, DMA not",
                "stale-memtype-after-flip": "stale memtype after flip", "not-domain-minimal": "more than minimal domains"}


def _share_cell(x, count) -> str:
    if x is None:
        return '<td class="muted">-</td>'
    color = "#2a7a2a" if x == 0 else "#b35900" if x < 1 else "#b00020"
    bar = (f'<svg width="40" height="10" aria-hidden="true"><rect width="40" height="10" fill="#eee"/>'
           f'<rect width="{max(1, round(40 * x)) if x else 0}" height="10" fill="{color}"/></svg>')
    return f'<td style="color:{color};white-space:nowrap">{bar} {100 * x:.0f}% <span class="muted">({count})</span></td>'


def _trace_list(trace) -> str:
    return '<ol class="trace">' + "".join(
        "<li><code>" + _e(" ".join([t["op"]] + [f"{k}={v}" for k, v in t.items() if k not in ("op", "pt")]))
        + "</code></li>" for t in trace) + "</ol>"


def _placement(o) -> str:
    return "; ".join(("CC" if h["enforce_cc"] else "non-CC") + " HWPT: " + ", ".join(h["devices"])
                     for h in o["hwpts"]) or "no HWPT"


def sweep_html(res: dict) -> str:
    """One self-contained page for ``sweep --html``: the per-policy table, verdicts, failure shares by
    system size, the smallest counterexample (system and trace) of each failure, and every system."""
    from ..sweep import FAILURES, read_off_sentence
    b = res["bound"]
    pols = res["policies"]
    head = "".join(f"<th>{_e(_FAIL_TITLES[f])}</th>" for f in FAILURES)
    rows = []
    for name, p in pols.items():
        v = p["verdict"]
        verdict = '<span class="no">holds</span>' if v["all"] else '<span class="yes">fails</span>'
        rows.append(f"<tr><td><b>{_e(name)}</b></td><td>{p['systems']}"
                    + (f' <span class="muted">(+{p["skipped"]} skipped)</span>' if p["skipped"] else "") + "</td>"
                    + "".join(_share_cell(p["share"][f], p["counts"][f]) for f in FAILURES)
                    + f"<td>{verdict}</td><td><code>{_e(v['smallest_failure'] or '-')}</code></td></tr>")
    verdicts = "".join(f"<li>{_e(s)}</li>" for s in res["verdicts"].values())
    # failing share by number of devices
    sizes = sorted({s["devices"] for s in res["systems"]})
    by_size = []
    for name in pols:
        cells = []
        for n in sizes:
            sys_n = [s for s in res["systems"] if s["devices"] == n and "skipped" not in s["results"][name]]
            bad = sum(1 for s in sys_n if _fails(s, name))
            x = bad / len(sys_n) if sys_n else None
            cells.append(_share_cell(x, bad))
        by_size.append(f"<tr><td>{_e(name)}</td>{''.join(cells)}</tr>")
    ce = []
    for name, p in pols.items():
        items = []
        for f, c in p["counterexamples"].items():
            if f == "order-dependent":
                body = "".join(f"<div>{o['orders']} order(s) end with {_e(_placement(o))}, e.g.:"
                               f"{_trace_list(o['trace'])}</div>" for o in c["trace"])
            else:
                body = _trace_list(c["trace"])
            items.append(f"<tr><td>{_e(_FAIL_TITLES[f])}</td><td><code>{_e(c['system'])}</code><br>"
                         f"<span class=\"muted\">final domains {_e(', '.join(f'{k}: {v}' for k, v in c['domain_counts'].items()))}; "
                         f"minimum {c['min_domains']}</span></td><td>{body}</td></tr>")
        if items:
            ce.append(f"<h3>{_e(name)}</h3><table><tr><th>failure</th><th>smallest system</th><th>trace</th></tr>"
                      f"{''.join(items)}</table>")
        else:
            ce.append(f'<h3>{_e(name)}</h3><p class="no">no failure on any system</p>')
    sysrows = []
    for s in res["systems"]:
        marks = []
        for name in pols:
            r = s["results"][name]
            if "skipped" in r:
                marks.append('<td class="muted">skipped</td>')
                continue
            bad = [k for k in _failures_of(s, r)]
            marks.append(f'<td class="{"yes" if bad else "no"}">{_e(", ".join(bad) or "ok")}</td>')
        sysrows.append(f"<tr><td><code>{_e(s['label'])}</code></td><td>{s['devices']}</td><td>{s['labelled']}</td>"
                       f"<td>{s['min_domains']}</td>{''.join(marks)}</tr>")
    eng = res.get("engine", {})
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>pyiommufd sweep: up to {b['max_devices']} devices</title>
<style>{CSS}
details summary{{cursor:pointer;margin:1em 0}}</style></head><body>
<h1>pyiommufd sweep: every system up to {b['max_devices']} devices and {b['max_units']} units</h1>
<p>{b['systems']} system shapes (Intel VT-d, a VM; units with and without Snoop Control, every iommu-group shape;
{b['with_unplug']} of them with hot-unplug events), standing for {b['labelled_systems']} labelled systems, each explored in
every attach order under each policy: {res['states']} states in {res['seconds']:.1f} s
({res['states_per_second']:.0f} states/s; engine {_e(eng.get('engine'))}, workers: {_e(eng.get('workers'))}){_e(read_off_sentence(res))}.</p>
<p class="muted">Shares count system shapes, each once.  Minimal domain count: 1 when any device is attached at the end,
0 when none is (docs/sweep.md).  A policy's verdict holds when it is order-independent, hazard-free and domain-minimal
on every system.</p>
<h2>Policies</h2>
<table><tr><th>policy</th><th>systems</th>{head}<th>verdict</th><th>smallest failing system</th></tr>{''.join(rows)}</table>
<h2>Verdicts</h2><ul>{verdicts}</ul>
<h2>Systems with any failure, by number of devices</h2>
<table><tr><th>policy</th>{''.join(f'<th>{n} device{"s" if n > 1 else ""}</th>' for n in sizes)}</tr>{''.join(by_size)}</table>
<h2>Smallest counterexamples</h2>{''.join(ce)}
<details><summary>Every system ({len(res['systems'])})</summary>
<table><tr><th>system</th><th>devices</th><th>labelled</th><th>min domains</th>{''.join(f'<th>{_e(n)}</th>' for n in pols)}</tr>
{''.join(sysrows)}</table></details>
</body></html>
"""


def _failures_of(s: dict, r: dict) -> list[str]:
    out = ["order-dependent"] if r["order_dependent"] else []
    out += [k for k, c in r["hazards"].items()]
    if any(int(k) > s["min_domains"] for k in r["domain_counts"]):
        out.append("not-domain-minimal")
    return out


def _fails(s: dict, name: str) -> bool:
    return bool(_failures_of(s, s["results"][name]))
