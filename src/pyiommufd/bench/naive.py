"""The baseline a user might write first: breadth-first search without the explorer's machinery.

The same model (``explore.Model``: the emulated kernel, the scenario's events, the
symmetry-off key), but no state cloning and no hash-based de-duplication:

* each state is kept as the path of events that reached it, and re-derived by running a
  fresh VMM through the stage and that path (no ``Vmm.clone``);
* visited keys live in a plain list, membership is a linear scan.

It answers the same question (the reachable states and which hazards they show), so its
state count is the explorer's with symmetry off; it exists to be timed against.
"""
from __future__ import annotations

import time

from ..explore import Model
from ..hazards import detect
from ..scenario import Scenario


def _replay(model: Model, path: tuple):
    vmm = model.init()          # a fresh VMM, the stage replayed
    for ei in path:
        vmm.apply(model.events[ei])
    return vmm


def naive_bfs(sc: Scenario, profile: str | None = None) -> dict:
    """{"states", "hazards": {kind: states showing it}, "edges" (transitions),
    "hazard_edges": {kind: transitions into a state showing it}, "seconds"}."""
    t0 = time.perf_counter()
    model = Model(sc, profile, symmetry=False)
    root = model.init()
    visited = [model.key(root, frozenset())]          # a list: `in` is a linear scan
    hazards: dict[str, int] = {}
    for h in {h.kind for h in detect(root.host)}:
        hazards[h] = 1
    frontier = [((), frozenset())]
    edges = 0
    hazard_edges: dict[str, int] = {}
    while frontier:
        nxt = []
        for path, done in frontier:
            for ei in model.actions(done):
                child_path, child_done = path + (ei,), done | {ei}
                vmm = _replay(model, child_path)
                key = model.key(vmm, child_done)
                kinds = {h.kind for h in detect(vmm.host)}    # the property, on every transition
                edges += 1
                for kind in kinds:
                    hazard_edges[kind] = hazard_edges.get(kind, 0) + 1
                if key in visited:
                    continue
                visited.append(key)
                nxt.append((child_path, child_done))
                for kind in kinds:
                    hazards[kind] = hazards.get(kind, 0) + 1
        frontier = nxt
    return {"states": len(visited), "edges": edges, "hazards": dict(sorted(hazards.items())),
            "hazard_edges": dict(sorted(hazard_edges.items())), "seconds": time.perf_counter() - t0}
