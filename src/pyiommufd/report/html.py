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
