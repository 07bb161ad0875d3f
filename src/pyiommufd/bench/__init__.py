"""``pyiommufd bench``: how fast the project does its job, beside what a user would pick instead.

One run measures, side by side (ratios taken within the run, since absolute times on a
shared machine are noisy):

1. the emulator: ioctls per second of a VMM's mix through client API + EmulatedTransport
   (``emulator.ioctl_throughput``);
2. map/unmap cost with 10^3 and with 10^6 live mappings in one IOAS (``emulator.map_scaling``);
3. the explorer on scenarios/bench/ (8 devices, and 10), with and without symmetry reduction;
4. the same question put to SPIN (``spin.run_spin``: the scenario transcribed to Promela,
   ``spin -a`` + ``gcc -O2`` + ``pan``) and to a naive breadth-first search (``naive.naive_bfs``),
   after checking that all three count the same reachable states and reach the same verdict.

Times: ``*_seconds`` are CPU seconds (this process's, plus its children's for SPIN and gcc),
best of the repetitions; the wall-clock times are beside them (``wall_seconds``).  Every job
here is single-threaded, so on an idle machine the two agree; on a shared one CPU time is the
one that does not count other tenants' work.  ``machine.loadavg`` says how shared it was.
"""
from __future__ import annotations

import gc
import os
import platform
import subprocess
import time
from pathlib import Path

from ..explore import explore
from ..scenario import load
from . import before, emulator, interposer, naive, spin

SCENARIOS = Path(__file__).resolve().parent.parent / "scenarios"
BENCH_8 = SCENARIOS / "bench" / "intel-8dev-3units.toml"
BENCH_10 = SCENARIOS / "bench" / "intel-10dev-3units.toml"
BENCH_12 = SCENARIOS / "bench" / "intel-12dev-4units.toml"
QUICK = SCENARIOS / "explore" / "hot-unplug.toml"
PROFILE = "linux-6.12"

HEADLINE = ("emulator_ioctls_per_s", "map_cost_ratio_1e6_vs_1e3", "explorer_states_per_s", "explorer_seconds",
            "naive_seconds", "spin_seconds", "spin_states", "explorer_states", "symmetry_reduction_factor")

# size of each part: full run, --quick
SIZES = {
    False: {"cycles": 2000, "ioctl_repeats": 15, "map_small": 1000, "map_large": 1_000_000, "map_ops": 5000,
            "map_rounds": 5, "repeats": 3, "scenarios": (BENCH_8, BENCH_10, BENCH_12),
            "naive_on": (BENCH_8, BENCH_10), "symmetry_only": (BENCH_12,), "emulate_ioctls": 40000,
            "before_rounds": 3},
    True: {"cycles": 1000, "ioctl_repeats": 5, "map_small": 1000, "map_large": 10_000, "map_ops": 1000,
           "map_rounds": 3, "repeats": 1, "scenarios": (QUICK,), "naive_on": (QUICK,), "symmetry_only": (),
           "emulate_ioctls": 4000, "before_rounds": 1},
}
GOAL_IOCTLS = 200_000
GOAL_MAP_RATIO = 2.0
GOAL_SPIN_RATIO = 0.5
GOAL_SPEEDUP = 10.0          # issue 14: symmetry-off explorer throughput vs before (same run, reference path)
GOAL_SPIN_VERIFY_RATIO = 0.25   # issue 14: explorer (symmetry) time to verdict vs pan alone, 12 devices
GOAL_REAL_IOCTL_RATIO = 5.0  # issue 14: an emulated ioctl vs a real ioctl syscall from Python
# issue 14's figure for the explorer before it (symmetry off, intel-8dev-3units, this machine, under load);
# the same run also measures that explorer (``live=False``, the reference path) for the ratio
BASELINE_ISSUE14_STATES_PER_S = 383
GOAL_EMULATE_IOCTLS = 20_000     # from C through the interposer (issue 12)
GOAL_EMULATE_RATIO = 3.0         # its cost per call / the in-process client's


def _best(fn, repeats: int):
    """Run ``fn`` ``repeats`` times; (its last result, best CPU seconds, best wall seconds)."""
    best_cpu = best_wall = float("inf")
    res = None
    for _ in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        res = fn()
        best_wall = min(best_wall, time.perf_counter() - t0)
        best_cpu = min(best_cpu, time.process_time() - c0)
    return res, best_cpu, best_wall


def _version(cmd: list[str]) -> str | None:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True).stdout
    except OSError:
        return None
    return out.strip().splitlines()[0] if out.strip() else None


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cpus": os.cpu_count(), "python": platform.python_version(),
            "os": f"{platform.system()} {platform.release()}", "spin": _version(["spin", "-V"]),
            "gcc": _version(["gcc", "--version"]), "loadavg": [round(x, 2) for x in os.getloadavg()]}


def top_functions(prof, n: int = 12) -> list[dict]:
    """The ``n`` functions with the most time of their own in a cProfile run, with their share."""
    import pstats
    st = pstats.Stats(prof)
    total = st.total_tt or 1.0
    rows = sorted(st.stats.items(), key=lambda kv: kv[1][2], reverse=True)[:n]
    out = []
    for (file, line, name), (cc, nc, tt, ct, _) in rows:
        where = f"{Path(file).name}:{line}({name})" if line else name
        out.append({"function": where, "calls": nc, "own_s": round(tt, 4), "cum_s": round(ct, 4),
                    "share": round(tt / total, 3)})
    return out


def explorer_breakdown(sc, profile: str = PROFILE) -> dict:
    """Where the symmetry-off explorer's time goes: cProfile cumulative time of its phases
    (restoring the live machine to a state, recording a new state, the events run on the model, the
    canonical key, hazard detection) and the garbage collector's share (the same run with gc off; the
    explorer turns it off itself, so about 0)."""
    import cProfile
    import pstats
    prof = cProfile.Profile()
    prof.enable()
    explore(sc, profile, symmetry=False)
    prof.disable()
    st = pstats.Stats(prof)
    total = st.total_tt or 1.0
    where = {("snapshot.py", "restore"): "restore states (snapshot.restore)",
             ("snapshot.py", "undo"): "undo a sibling's event (snapshot.undo)",
             ("snapshot.py", "__init__"): "record new states (Snapshot)",
             ("runner.py", "apply"): "run events on the model",
             ("explore.py", "canonical"): "canonical key",
             ("hazards.py", "detect"): "hazard detection"}
    phase = dict.fromkeys(where.values(), 0.0)
    calls = dict.fromkeys(where.values(), 0)
    for (file, _, name), (_, nc, tt, ct, _) in st.stats.items():
        label = where.get((Path(file).name, name))
        if label is not None:
            phase[label] += ct
            calls[label] += nc
    shares = {k: round(v / total, 3) for k, v in phase.items()}
    shares["rest (BFS bookkeeping, counting)"] = round(max(0.0, 1 - sum(shares.values())), 3)
    _, with_gc, _ = _best(lambda: explore(sc, profile, symmetry=False), 1)
    gc.disable()
    try:
        _, without_gc, _ = _best(lambda: explore(sc, profile, symmetry=False), 1)
    finally:
        gc.enable()
    # per call, under the profiler (which inflates small calls): what one transition or one new state costs
    per_call = {k: {"calls": calls[k], "us_per_call": round(phase[k] / calls[k] * 1e6, 1) if calls[k] else None}
                for k in phase}
    return {"phases_share_cprofile": shares, "phases_per_call_cprofile": per_call, "top_functions": top_functions(prof),
            "gc_share": round(max(0.0, with_gc - without_gc) / with_gc, 3) if with_gc else None}


def compare_engines(path: Path, profile: str = PROFILE, repeats: int = 1, with_naive: bool = True,
                    with_spin: bool = True, progress=None, no_symmetry: bool = True) -> dict:
    """Explorer (symmetry on and off; off also on the reference path, the explorer before issue 14), naive
    BFS and SPIN on one scenario: counts, verdicts, times.  ``no_symmetry=False``: the symmetry-on explorer
    and SPIN only (too many states for the rest)."""
    say = progress or (lambda msg: None)
    sc = load(path)
    out: dict = {"scenario": str(path.relative_to(SCENARIOS.parent)) if path.is_relative_to(SCENARIOS.parent)
                 else str(path), "events": len(sc.events)}
    say(f"{sc.name}: explorer, symmetry on")
    r, cpu, wall = _best(lambda: explore(sc, profile, symmetry=True), max(repeats, 3))
    out["explorer_symmetry"] = {"states": r["states"], "orders": r["orders"], "seconds": round(cpu, 4),
                                "wall_seconds": round(wall, 4), "states_per_s": round(r["states"] / cpu, 1),
                                "hazards": [h["kind"] for h in r["hazards"]]}
    if no_symmetry:
        say(f"{sc.name}: explorer, symmetry off")
        r, cpu, wall = _best(lambda: explore(sc, profile, symmetry=False), repeats)
        out["explorer"] = {"states": r["states"], "orders": r["orders"], "seconds": round(cpu, 4),
                           "wall_seconds": round(wall, 4), "states_per_s": round(r["states"] / cpu, 1),
                           "hazards": [h["kind"] for h in r["hazards"]],
                           "hazard_states": {h["kind"]: h["states"] for h in r["hazards"]}}
        say(f"{sc.name}: explorer before issue 14 (reference path: a pickled copy per state), symmetry off")
        r, cpu, wall = _best(lambda: explore(sc, profile, symmetry=False, live=False), repeats)
        out["explorer_reference"] = {"states": r["states"], "seconds": round(cpu, 4), "wall_seconds": round(wall, 4),
                                     "states_per_s": round(r["states"] / cpu, 1),
                                     "hazards": [h["kind"] for h in r["hazards"]]}
        out["speedup_vs_reference"] = round(out["explorer_reference"]["seconds"] / out["explorer"]["seconds"], 2)
    if with_naive:
        say(f"{sc.name}: naive BFS (path replay, list of visited keys)")
        r, cpu, wall = _best(lambda: naive.naive_bfs(sc, profile), 1)
        out["naive"] = {"states": r["states"], "transitions": r["edges"], "seconds": round(cpu, 4),
                        "wall_seconds": round(wall, 4), "hazards": sorted(r["hazards"]),
                        "hazard_states": r["hazards"], "hazard_transitions": r["hazard_edges"]}
    if with_spin:
        say(f"{sc.name}: SPIN (spin -a, gcc -O2, pan)")
        runs = [spin.run_spin(sc, profile) for _ in range(repeats)]
        best = min(runs, key=lambda s: s["cpu_seconds"]["total"])
        out["spin"] = {"states": best["states"], "transitions": best["transitions"] - 1,
                       "hazard_transitions": best["hazard_transitions"], "hazards": best["hazards"],
                       "seconds": best["cpu_seconds"]["total"], "wall_seconds": best["seconds"]["total"],
                       "verify_seconds": min(s["cpu_seconds"]["verify"] for s in runs),
                       "phases": best["cpu_seconds"], "phases_wall": best["seconds"],
                       "promela_lines": best["promela_lines"],
                       "note": "transitions: pan's 'transitions' less 1 (pan counts the initial state as one); "
                               "hazard_transitions: pan's assertion errors under -c0 (one per transition into "
                               "a hazard state)"}
    if "spin" in out:
        out["explorer_vs_spin_verify"] = round(out["explorer_symmetry"]["seconds"] / out["spin"]["verify_seconds"], 3) \
            if out["spin"]["verify_seconds"] else None
        out["explorer_vs_spin_total"] = round(out["explorer_symmetry"]["seconds"] / out["spin"]["seconds"], 3)
    counts = {k: out[k]["states"] for k in ("explorer", "explorer_reference", "naive", "spin") if k in out}
    verdicts = {k: out[k]["hazards"] for k in ("explorer_symmetry", "explorer", "explorer_reference", "naive", "spin")
                if k in out}
    out["states_agree"] = len(set(counts.values())) == 1
    out["verdicts_agree"] = len({tuple(v) for v in verdicts.values()}) == 1
    if "naive" in out and "spin" in out:
        out["transitions_agree"] = out["naive"]["transitions"] == out["spin"]["transitions"] and \
            sum(out["naive"]["hazard_transitions"].values()) == out["spin"]["hazard_transitions"]
    out["symmetry_reduction_factor"] = round(out["explorer"]["states"] / out["explorer_symmetry"]["states"], 2) \
        if "explorer" in out else (round(out["spin"]["states"] / out["explorer_symmetry"]["states"], 2)
                                   if "spin" in out else None)
    return out


def run(quick: bool = False, with_spin: bool = True, progress=None, sizes: dict | None = None) -> dict:
    """The whole benchmark; the ``pyiommufd bench --json`` object.  ``sizes`` overrides SIZES[quick]."""
    say = progress or (lambda msg: None)
    z = dict(SIZES[quick], **(sizes or {}))
    res: dict = {"quick": quick, "profile": PROFILE, "machine": machine(),
                 "timing": "seconds are CPU seconds (process + children), best of the repetitions; "
                           "wall_seconds beside them"}
    t_start = time.perf_counter()

    say("emulator: ioctl mix through client + EmulatedTransport")
    em = emulator.ioctl_throughput(cycles=z["cycles"], repeats=z["ioctl_repeats"], profile=PROFILE)
    em["us_per_ioctl_by_kind"] = emulator.per_op_costs(max(z["cycles"] // 2, 200), PROFILE)
    say("a real ioctl syscall from Python, for scale (TCGETS on a pty)")
    real = emulator.real_ioctl_cost(calls=10 * z["cycles"], repeats=z["ioctl_repeats"] // 3 or 1)
    em["us_per_ioctl"] = round(1e6 / em["ioctls_per_cpu_s"], 3)
    em["real_ioctl"] = real
    em["emulated_vs_real_ioctl"] = round(em["us_per_ioctl"] / real["us_per_call"], 2)
    # the path alone (an ioctl with next to no model work): the least the mix could cost per call
    em["emulated_floor_vs_real_ioctl"] = round(em["us_per_ioctl_by_kind"][emulator.FLOOR] / real["us_per_call"], 2)
    res["emulator"] = em
    say(f"map/unmap scaling: {z['map_small']:,} vs {z['map_large']:,} live mappings")
    ms = emulator.map_scaling(z["map_small"], z["map_large"], ops=z["map_ops"], rounds=z["map_rounds"],
                              profile=PROFILE, progress=say)
    res["map_scaling"] = ms
    say("emulate: ioctls from C through the interposer, beside the in-process client path")
    res["emulate"] = interposer.compare(z["emulate_ioctls"], PROFILE, z["repeats"])

    engines = {}
    for path in z["scenarios"]:
        engines[path.stem] = compare_engines(path, PROFILE, z["repeats"], with_naive=path in z["naive_on"],
                                             with_spin=with_spin, progress=say,
                                             no_symmetry=path not in z["symmetry_only"])
    res["explorer"] = engines
    say("the explorer of the commit before issue 14 (from git history), alternately with today's, symmetry off")
    try:
        res["explorer_before_issue14"] = before.measure(z["scenarios"][0], PROFILE, z["before_rounds"], say)
    except before.Unavailable as e:
        res["explorer_before_issue14"] = {"skipped": str(e)}
    main = engines[z["scenarios"][0].stem]
    res.update({
        "emulator_ioctls_per_s": em["ioctls_per_cpu_s"],
        "map_cost_ratio_1e6_vs_1e3": ms["ratio"],
        "explorer_states_per_s": main["explorer"]["states_per_s"],
        "explorer_seconds": main["explorer"]["seconds"],
        "naive_seconds": main["naive"]["seconds"] if "naive" in main else None,
        "spin_seconds": main["spin"]["seconds"] if "spin" in main else None,
        "spin_states": main["spin"]["states"] if "spin" in main else None,
        "explorer_states": main["explorer"]["states"],
        "symmetry_reduction_factor": main["symmetry_reduction_factor"],
        "explorer_symmetry_seconds": main["explorer_symmetry"]["seconds"],
        "explorer_symmetry_states": main["explorer_symmetry"]["states"],
        "headline_scenario": main["scenario"],
        "explorer_reference_states_per_s": main["explorer_reference"]["states_per_s"],
        "explorer_speedup_vs_reference": main["speedup_vs_reference"],
        "explorer_speedup_vs_issue14_figure": round(main["explorer"]["states_per_s"] / BASELINE_ISSUE14_STATES_PER_S, 2),
        "emulated_vs_real_ioctl": em["emulated_vs_real_ioctl"],
        "emulated_floor_vs_real_ioctl": em["emulated_floor_vs_real_ioctl"],
        "explorer_speedup_vs_before_issue14_code": res["explorer_before_issue14"].get("speedup"),
    })
    if BENCH_12.stem in engines and "spin" in engines[BENCH_12.stem]:
        res["explorer_vs_spin_verify_12"] = engines[BENCH_12.stem]["explorer_vs_spin_verify"]
    if not with_spin:
        res["spin_skipped"] = "spin or gcc not installed (apt-get install spin gcc)"
    spin_s = res["spin_seconds"]
    res["ratios"] = {
        "explorer_vs_spin": round(res["explorer_symmetry_seconds"] / spin_s, 3) if spin_s else None,
        "explorer_no_symmetry_vs_spin": round(res["explorer_seconds"] / spin_s, 3) if spin_s else None,
        "naive_vs_explorer_no_symmetry": round(res["naive_seconds"] / res["explorer_seconds"], 2)
        if res["naive_seconds"] else None,
        "naive_vs_explorer": round(res["naive_seconds"] / res["explorer_symmetry_seconds"], 2)
        if res["naive_seconds"] else None,
        "symmetry_speedup": round(res["explorer_seconds"] / res["explorer_symmetry_seconds"], 2),
        "explorer_vs_spin_verify": main.get("explorer_vs_spin_verify"),
        "explorer_no_symmetry_vs_reference": round(1 / main["speedup_vs_reference"], 3),
        "map_cost_1e6_vs_1e3": ms["ratio"],
        "emulator_cpu_vs_wall": round(em["ioctls_per_cpu_s"] / em["ioctls_per_s"], 2),
    }
    res["goals"] = goals(res)
    unmet = {g["id"] for g in res["goals"] if g["met"] is False}
    res["profiles"] = {}
    if "emulator_ioctls" in unmet:
        say("profiling the emulator (goal not met)")
        prof = emulator.profile_cycle(min(z["cycles"], 3000), PROFILE)
        res["profiles"]["emulator"] = {"layers_share_cprofile": emulator.layer_shares(prof),
                                       "top_functions": top_functions(prof)}
    if unmet & {"explorer_vs_spin", "explorer_no_symmetry_vs_spin", "explorer_speedup", "explorer_vs_spin_verify_12"}:
        say("profiling the explorer, symmetry off (goal not met)")
        res["profiles"]["explorer"] = explorer_breakdown(load(z["scenarios"][0]), PROFILE)
    if "map_cost_ratio" in unmet:
        say("profiling map/unmap at the large size (goal not met)")
        res["profiles"]["map_scaling"] = top_functions(emulator.profile_probe(z["map_large"], z["map_ops"], PROFILE))
    res["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    res["total_wall_seconds"] = round(time.perf_counter() - t_start, 1)
    return res


def goals(res: dict) -> list[dict]:
    """The issue's goals, each with the measured value and whether it is met (None: not measured)."""
    r = res["ratios"]
    large = res["map_scaling"]["live"][1]
    out = [
        {"id": "emulator_ioctls", "goal": f"emulator >= {GOAL_IOCTLS:,} ioctls/s on one core",
         "value": res["emulator_ioctls_per_s"], "met": res["emulator_ioctls_per_s"] >= GOAL_IOCTLS},
        {"id": "map_cost_ratio", "goal": f"map/unmap cost with {large:,} live mappings <= {GOAL_MAP_RATIO} x "
                                         f"with {res['map_scaling']['live'][0]:,}",
         "value": res["map_cost_ratio_1e6_vs_1e3"], "met": res["map_cost_ratio_1e6_vs_1e3"] <= GOAL_MAP_RATIO},
        {"id": "explorer_vs_spin", "goal": f"explorer (default: symmetry on) time to verdict <= {GOAL_SPIN_RATIO} x "
                                           f"SPIN's ({res['headline_scenario']})",
         "value": r["explorer_vs_spin"], "met": None if r["explorer_vs_spin"] is None
         else r["explorer_vs_spin"] <= GOAL_SPIN_RATIO},
        {"id": "explorer_no_symmetry_vs_spin", "goal": f"explorer without symmetry (the same states as SPIN) <= "
                                                       f"{GOAL_SPIN_RATIO} x SPIN's time",
         "value": r["explorer_no_symmetry_vs_spin"], "met": None if r["explorer_no_symmetry_vs_spin"] is None
         else r["explorer_no_symmetry_vs_spin"] <= GOAL_SPIN_RATIO},
    ]
    out.append({"id": "explorer_speedup", "goal": f"explorer throughput, symmetry off, >= {GOAL_SPEEDUP:g} x before "
                                              f"(the reference path in this run; issue 14: {BASELINE_ISSUE14_STATES_PER_S} "
                                              "states/s)",
                "value": res["explorer_speedup_vs_reference"], "met": res["explorer_speedup_vs_reference"] >= GOAL_SPEEDUP})
    v = res["explorer_speedup_vs_before_issue14_code"]
    out.append({"id": "explorer_speedup_same_run", "goal": f"explorer throughput, symmetry off, >= {GOAL_SPEEDUP:g} x "
                                                       f"the explorer of commit {before.BEFORE} (before issue 14), "
                                                       "measured alternately in this run",
                "value": v, "met": None if v is None else v >= GOAL_SPEEDUP})
    out.append({"id": "emulated_vs_real_ioctl", "goal": f"an emulated ioctl (mix, client + transport) <= "
                                                    f"{GOAL_REAL_IOCTL_RATIO:g} x a real ioctl syscall from Python",
                "value": res["emulated_vs_real_ioctl"], "met": res["emulated_vs_real_ioctl"] <= GOAL_REAL_IOCTL_RATIO})
    if "explorer_vs_spin_verify_12" in res:
        v = res["explorer_vs_spin_verify_12"]
        out.append({"id": "explorer_vs_spin_verify_12", "goal": f"explorer (symmetry) time to verdict <= "
                                                            f"{GOAL_SPIN_VERIFY_RATIO} x SPIN's verify (pan) alone, 12 devices",
                    "value": v, "met": None if v is None else v <= GOAL_SPIN_VERIFY_RATIO})
    em = res.get("emulate")
    if em:
        out.append({"id": "emulate_c_ioctls", "goal": f"emulated ioctls from C through the interposer >= "
                                                      f"{GOAL_EMULATE_IOCTLS:,}/s (wall)",
                    "value": em["c_ioctls_per_s"], "met": em["c_ioctls_per_s"] >= GOAL_EMULATE_IOCTLS})
        out.append({"id": "emulate_vs_in_process", "goal": f"cost per call from C <= {GOAL_EMULATE_RATIO} x the "
                                                           "in-process client path's (same run, wall)",
                    "value": em["ratio_c_vs_in_process"], "met": em["ratio_c_vs_in_process"] <= GOAL_EMULATE_RATIO})
    for name, e in res["explorer"].items():
        out.append({"id": f"counts_{name}", "goal": f"{name}: explorer, naive BFS and SPIN count the same states "
                                                   "and reach the same verdict",
                    "value": {k: e[k]["states"] for k in ("explorer", "naive", "spin") if k in e},
                    "met": e["states_agree"] and e["verdicts_agree"] and e.get("transitions_agree", True)})
    return out
