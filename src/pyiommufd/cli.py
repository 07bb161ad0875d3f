"""Command line.  argparse lives only here; output formats are pure functions in report/.

Exit codes: 0 success / expectations met, 1 an expectation failed (or a hazard with
--fail-on-hazard), 2 bad input or usage, 3 the environment lacks what is needed.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time

from rich.console import Console

from . import __version__
from .errors import EmulationGap, EnvironmentMissing, ScenarioError
from .profiles import DEFAULT_PROFILE, PROFILES, ProfileFileError, get_profile, profile_for_kernel, register_profile_file

EPILOG_RUN = """examples:
  pyiommufd run scenarios/thread/noncc-first.toml
  pyiommufd run scenarios/thread/noncc-first.toml --profile linux-6.2
  pyiommufd run scenarios/thread/noncc-first.toml --kernel 6.6.5 --json

A scenario is a TOML file: [system] (iommu, units, kvm), [[devices]] and [[steps]]
(ops: ioas_alloc map unmap hwpt_alloc bind attach replace detach destroy unbind
kvm_add kvm_del hotplug hot_unplug dma hw_info).  See docs/scenarios.md."""


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse exits 2 itself; keep its message, say how to get help
        self.print_usage(sys.stderr)
        sys.stderr.write(f"{self.prog}: error: {message}\n(try '{self.prog} --help')\n")
        raise SystemExit(2)


def _apply_profile_files(args) -> None:
    """--profile-file FILE.toml (every command with profiles): register each file's profile by its name;
    with one file and no --profile/--kernel, it is the profile the command uses."""
    files = getattr(args, "profile_file", None)
    if not files:
        return
    try:
        names = [register_profile_file(f).name for f in files]
    except ProfileFileError as e:
        raise UsageError(f"--profile-file {e}") from None
    args.profile_file_names = names
    if hasattr(args, "profile") and args.profile is None and getattr(args, "kernel", None) is None:
        if len(set(names)) > 1:
            raise UsageError(f"several --profile-file ({', '.join(names)}): choose one with --profile NAME")
        args.profile = names[0]


def _profile_arg(args, scenario_profile: str | None = None) -> str:
    if getattr(args, "kernel", None) is not None and getattr(args, "profile", None) is not None:
        raise UsageError("--profile and --kernel name the same thing; give one")
    if getattr(args, "kernel", None) is not None:
        try:
            return profile_for_kernel(args.kernel).name
        except ValueError as e:
            raise UsageError(str(e)) from None
    name = getattr(args, "profile", None)
    if name is None:  # (an explicit --profile "" is an unknown profile, not "use the default")
        name = scenario_profile or DEFAULT_PROFILE
    try:
        return get_profile(name).name
    except KeyError as e:
        raise UsageError(e.args[0]) from None


def cmd_run(args, out: Console, err: Console) -> int:
    from .report.text import run_report
    from .runner import run
    from .scenario import load
    sc = load(args.scenario)
    res = run(sc, _profile_arg(args, sc.profile), args.strategy)
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        run_report(res, out)
    if not res["ok"]:
        return 1
    if args.fail_on_hazard and res["final"]["hazards"]:
        return 1
    return 0


def _explore_kw(args, err: Console) -> dict:
    if args.max_states is not None and args.max_states < 1:
        raise UsageError("--max-states must be at least 1")
    from .explore import stderr_progress
    return {"symmetry": not args.no_symmetry, "max_states": args.max_states,
            "progress": None if args.quiet else stderr_progress(err)}


def cmd_explore(args, out: Console, err: Console) -> int:
    from .explore import explore
    from .report.text import explore_report
    from .scenario import load
    sc = load(args.scenario)
    res = _engine_explore(sc, _profile_arg(args, sc.profile), args, err) if args.engine != "process" or \
        args.fingerprint_bits is not None or args.workers is not None or args.address else \
        explore(sc, _profile_arg(args, sc.profile), args.strategy, **_explore_kw(args, err))
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        explore_report(res, out)
    return 1 if args.fail_on_hazard and res["hazards"] else 0


def cmd_compare(args, out: Console, err: Console) -> int:
    from .explore import compare
    from .report.text import compare_report
    from .scenario import load
    sc = load(args.scenario)
    default = list(sc.profiles) + [n for n in getattr(args, "profile_file_names", []) if n not in sc.profiles]
    profiles = [p.strip() for p in (args.profiles or ",".join(default)).split(",") if p.strip()]
    for p in profiles:
        if p not in PROFILES:
            raise UsageError(f"--profiles: unknown profile {p!r}; known: {', '.join(PROFILES)}")
    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()] if args.strategies else None
    if strategies:
        from .userspace import STRATEGIES
        for s in strategies:
            if s not in STRATEGIES:
                raise UsageError(f"--strategies: unknown strategy {s!r}; known: {', '.join(STRATEGIES)}")
    res = compare(sc, profiles, strategies, graph_limit=200 if args.html else 0, **_explore_kw(args, err))
    if args.html:
        from .report.html import compare_html
        try:
            with open(args.html, "w") as f:
                f.write(compare_html(sc, res))
        except OSError as e:
            raise UsageError(f"--html {args.html}: {e.strerror}") from None
        err.print(f"wrote {args.html}")
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        compare_report(res, out)
    return 0


def _engine_explore(sc, profile: str, args, err: Console) -> dict:
    """explore --engine ray / --fingerprint-bits: the sharded explorer (distributed.py)."""
    from .distributed import ray_explore, sharded_explore
    bits = args.fingerprint_bits
    if bits is not None and not 1 <= bits <= 256:
        raise UsageError("--fingerprint-bits must be between 1 and 256 (64 is the usual choice)")
    if args.workers is not None and args.workers < 1:
        raise UsageError("--workers must be at least 1")
    kw = dict(_explore_kw(args, err), fingerprint_bits=bits)
    if args.engine == "ray":
        return ray_explore(sc, profile, args.strategy, workers=args.workers, address=args.address, **kw)
    if args.address or args.workers is not None:
        raise UsageError(f"{'--address' if args.address else '--workers'} needs --engine ray "
                         "(the in-process explorer runs in one process)")
    return sharded_explore(sc, profile, args.strategy, shards=1, **kw)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def cmd_sweep(args, out: Console, err: Console) -> int:
    from .report.progress import SweepProgress
    from .report.text import sweep_report
    from .sweep import SweepInterrupted, SystemShape, _check_bounds, parse_policies, run_sweep, systems_of_size
    from .sweep_size import duration, size_sweep
    if args.workers is not None and args.workers < 1:
        raise UsageError("--workers must be at least 1")
    if args.max_states is not None and args.max_states < 1:
        raise UsageError("--max-states must be at least 1")
    if args.address and args.engine != "ray":
        raise UsageError("--address needs --engine ray")
    try:
        if getattr(args, "profile_file_names", None) and not args.policies and not args.profiles:
            from .sweep import DEFAULT_POLICIES, LINUX_PROFILES, PROPOSALS   # the defaults plus the files'
            if args.strategies:
                args.profiles = ",".join(LINUX_PROFILES + PROPOSALS + args.profile_file_names)
            else:
                args.policies = ",".join(list(DEFAULT_POLICIES) + args.profile_file_names)
        policies = parse_policies(args.policies, args.profiles, args.strategies)
        if args.system:
            sizes = [sorted({SystemShape.from_label(s) for s in args.system}, key=SystemShape.size_key)]
        else:
            _check_bounds(args.max_devices, args.max_units, args.min_devices)
            sizes = (systems_of_size(n, args.max_units, sc=args.sc, groups=args.groups, unplug=args.unplug)
                     for n in range(args.min_devices, args.max_devices + 1))
    except ValueError as e:
        raise UsageError(str(e)) from None
    if args.engine == "ray":
        from .distributed import RayEngine, require_ray
        require_ray(local=not args.address)    # before counting: say at once what is missing (exit 3)
        engine = RayEngine(args.workers, args.address)
    else:
        from .sweep import ProcessEngine
        engine = ProcessEngine(args.workers)
    symmetry = not args.no_symmetry
    started = time.perf_counter()
    try:
        size = size_sweep(sizes, policies, workers=engine.workers, symmetry=symmetry, max_states=args.max_states,
                          force=args.force, max_devices=None if args.system else args.max_devices)
    except KeyboardInterrupt:
        err.print("sweep: interrupted while counting the systems; nothing was explored", markup=False, soft_wrap=True)
        return 130
    if not size.shapes:
        raise UsageError("no system matches these bounds")
    if size.beyond_bound and not args.force:
        raise UsageError(f"{size.sentence()}.  That is beyond the bound of {duration(size.bound_seconds)}: narrow "
                         "the sweep (--max-devices, --max-units, --groups own, --unplug none, --policies) or give "
                         "--force to run it anyway")
    if not args.quiet:
        err.print(size.sentence() + f"; engine {args.engine}", markup=False, soft_wrap=True)
    weights = size.weights(symmetry)
    previous = signal.signal(signal.SIGTERM, _interrupt)   # SIGTERM ends a sweep as Ctrl-C does
    try:
        with SweepProgress(err, weights, quiet=args.quiet) as progress:
            progress.skip(size.calibration.results)
            res = run_sweep(size.shapes, policies, engine=engine, max_states=args.max_states, symmetry=symmetry,
                            progress=progress, precomputed=size.calibration.results, started=started)
    except SweepInterrupted as e:
        err.print(f"sweep: interrupted after {e.done} of {e.total} systems ({e.states:,} states, "
                  f"{duration(e.seconds)}); nothing reported: a part of a sweep gives no verdict", markup=False,
                  soft_wrap=True)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    res["estimate"] = size.to_json()
    if args.html:
        from .report.html import sweep_html
        try:
            with open(args.html, "w") as f:
                f.write(sweep_html(res))
        except OSError as e:
            raise UsageError(f"--html {args.html}: {e.strerror}") from None
        err.print(f"wrote {args.html}")
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        sweep_report(res, out, details=not args.brief)
    return 0


def cmd_profiles(args, out: Console, err: Console) -> int:
    from .report.text import profiles_report
    names = getattr(args, "profile_file_names", None)   # --profile-file: show (and so check) those only
    shown = [PROFILES[n] for n in names] if names else list(PROFILES.values())
    from .profiles import FILE_BASES, overrides
    if args.json:
        print(json.dumps({"default": DEFAULT_PROFILE, "profiles": [
            {**p.to_json(), **({"base": FILE_BASES[p.name], "overrides": {k: v for k, (_, v) in overrides(p).items()}}
                               if p.name in FILE_BASES else {})} for p in shown]}, indent=2))
    else:
        profiles_report(shown, out)
        for p in shown:
            for k, (was, now) in overrides(p).items():
                out.print(f"  {p.name}: {k} = {now!r} (base {FILE_BASES[p.name]}: {was!r}) -- {p.sources.get(k)}",
                          markup=False)
    return 0


def cmd_demo(args, out: Console, err: Console) -> int:
    from .demo import demo
    return demo(out, as_json=args.json)


def cmd_info(args, out: Console, err: Console) -> int:
    from .conform.hostinfo import collect, domain_counts, info_report
    info = collect(bind=not args.no_bind)
    if not args.no_domain_counts:
        info["domain_counts"] = domain_counts(info)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        info_report(info, out)
    return 0


def _conform_items(args):
    from pathlib import Path

    from .conform.corpus import Item, default_corpus
    from .scenario import load
    if not args.scenarios:
        return default_corpus(args.seed, args.random)
    items = []
    for path in args.scenarios:
        load(path)  # bad input: exit 2 naming the file and step
        p = Path(path)
        items.append(Item(p.stem if p.stem not in {i.name for i in items} else str(p), p.read_text(), str(p)))
    return items


def cmd_conform(args, out: Console, err: Console) -> int:
    import shutil
    from pathlib import Path

    from .conform import harness
    from .conform.build import DEFAULT_TARBALL, GUEST_PYTHON, BuildError
    from .conform.qemu import QEMU
    if args.random < 0:
        raise UsageError("--random must be at least 0")
    names = args.config or list(harness.CONFIGS)
    for n in names:
        if n not in harness.CONFIGS:
            raise UsageError(f"--config: unknown configuration {n!r}; known: {', '.join(harness.CONFIGS)}")
    configs = [harness.CONFIGS[n] for n in dict.fromkeys(names)]
    items = _conform_items(args)
    if args.list:
        per, unfit = harness.plan(items, configs)
        if args.json:
            print(json.dumps({"configs": {c: [i.name for i in v] for c, v in per.items()}, "unfit": unfit}, indent=2))
        else:
            for c, v in per.items():
                out.print(f"{c}: {len(v)} scenarios", markup=False)
            for u in unfit:
                out.print(f"fits nowhere: {u['scenario']}: {u['why']}", markup=False)
        return 0
    missing = [what for what, ok in (
        (f"{QEMU} (apt-get install qemu-system-x86)", shutil.which(QEMU)),
        ("busybox (apt-get install busybox-static)", shutil.which("busybox")),
        (f"{GUEST_PYTHON} (apt-get install python3.11)", GUEST_PYTHON.is_file()),
        (f"{DEFAULT_TARBALL} (apt-get install linux-source-6.12)", args.kernel_source or
         Path(os.environ.get("PYIOMMUFD_LINUX_TARBALL") or DEFAULT_TARBALL).is_file())) if not ok]
    if args.kernel_source and not Path(args.kernel_source).exists():
        raise UsageError(f"--kernel-source {args.kernel_source}: no such file or directory")
    if args.kernel_source and Path(args.kernel_source).is_dir() and not all(
            (Path(args.kernel_source) / f).is_file() for f in ("Makefile", "Kconfig")):
        raise UsageError(f"--kernel-source {args.kernel_source}: not a kernel source tree (no Makefile and Kconfig)")
    if missing:
        raise EnvironmentMissing("conformance needs " + "; ".join(missing)
                                 + ".  Run: sh src/pyiommufd/conform/install-deps.sh")
    if args.selftest:
        return _conform_selftest(args, out, err)
    if args.scenarios:
        per, unfit = harness.plan(items, configs)
        if unfit and len(unfit) == len(items):
            raise UsageError("no scenario fits a configuration: " + "; ".join(f"{u['scenario']}: {u['why']}" for u in unfit))
    try:
        res = harness.run_conformance(items, configs, cache=args.cache, dma_probe=not args.no_dma, jobs=args.jobs,
                                      timeout=args.timeout, log=lambda m: err.print(f"[conform] {m}", markup=False),
                                      profile=_profile_arg(args) if args.profile else None,
                                      source=args.kernel_source)
    except BuildError as e:
        raise EnvironmentMissing(f"cannot build the conformance kernel or initramfs: {e}") from None
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        print(harness.text_report(res, all_rows=not args.differences_only))
    dma_failed = not args.no_dma and res["dma"] and not res["dma_ok"]
    return 1 if res["unexplained"] or dma_failed or not res["client_example_ok"] else 0


def _conform_selftest(args, out: Console, err: Console) -> int:
    """conform --selftest: the kernel's own iommufd selftest on the real kernel (conform/selftest.py)."""
    from pathlib import Path

    from .conform import selftest
    from .conform.build import BuildError, default_cache_dir
    from .conform.qemu import BootError
    if args.scenarios:
        raise UsageError("--selftest runs the kernel's selftest programs, not scenarios")
    try:
        res = selftest.run_selftest(cache=args.cache, source=args.kernel_source, log=lambda m: err.print(f"[conform] {m}", markup=False))
    except BuildError as e:
        raise EnvironmentMissing(f"cannot build the conformance kernel or initramfs: {e}") from None
    except BootError as e:
        _say(f"pyiommufd: the selftest VM failed: {e}")
        return 1
    path = Path(args.cache or default_cache_dir()) / selftest.RESULT_NAME.format(release=res["kernel"])
    selftest.write_result(selftest.public_json(res), path)
    path.with_suffix(".tap").write_text("".join(f"# ===== {prog}\n{p['tap']}" for prog, p in res["programs"].items()))
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        print(selftest.text_report(res, all_rows=not args.differences_only))
        print(f"written: {path} (raw TAP: {path.with_suffix('.tap')})")
    return 0 if selftest.ok(res) else 1


def cmd_bench(args, out: Console, err: Console) -> int:
    from .bench import run
    from .bench.spin import missing_tools
    from .report.bench import bench_report
    missing = missing_tools()
    if missing and not args.quick:
        raise EnvironmentMissing(f"bench compares against SPIN and needs {' and '.join(missing)}, not found on PATH: "
                                 "apt-get install spin gcc (or run 'pyiommufd bench --quick', which reports "
                                 "spin_* as null without them)")
    say = (lambda msg: None) if args.quiet else (lambda msg: err.print(f"[dim]bench: {msg}[/]"))
    res = run(quick=args.quick, with_spin=not missing, progress=say)
    res["command"] = "pyiommufd bench" + (" --quick" if args.quick else "") + (" --json" if args.json else "")
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        bench_report(res, out)
    return 0


def cmd_emulate(args, out: Console, err: Console) -> int:
    from . import emulate
    from .profiles import get_profile
    from .system import System, Unit
    if args.cflags:
        from pathlib import Path
        print(f"-I{Path(emulate.__file__).with_name('include')}")
        return 0
    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        raise UsageError("emulate needs a command after '--' (e.g. pyiommufd emulate -- ./my-vmm)")
    scenario_profile = None
    if args.system:
        from .scenario import load
        sc = load(args.system)
        system, scenario_profile = sc.system, sc.profile
    else:   # only what the program makes itself (IOMMU_TEST_CMD mock devices)
        system = System(iommu="mock", units=(Unit("mock0"),))
    profile = get_profile(_profile_arg(args, scenario_profile))
    return emulate.run(cmd, system, profile, trace=args.trace, record=args.record, system_path=args.system,
                       quiet=args.quiet)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="pyiommufd", description="Drive Linux iommufd, real or emulated, and answer cache-coherency "
                "questions by running them.  Start with: pyiommufd demo",
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"pyiommufd {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    r = sub.add_parser("run", help="run a scenario's steps in order on the emulator",
                       description="Run the steps of a scenario file in order on the emulated kernel and report "
                       "each step's result, the domains at the end, KVM's view and any hazards.",
                       epilog=EPILOG_RUN, formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("scenario", help="scenario TOML file")
    _profile_opts(r)
    r.add_argument("--json", action="store_true", help="machine output on stdout (DESIGN.md contract)")
    r.add_argument("--fail-on-hazard", action="store_true", help="exit 1 if any hazard was reached")
    r.add_argument("--strategy", default="kernel-auto", choices=["kernel-auto", "qemu-style", "cc-aware"],
                   help="how the VMM places a device attached to an IOAS (default: kernel-auto)")
    r.set_defaults(fn=cmd_run)

    e = sub.add_parser("explore", help="explore every order of a scenario's [explore] events",
                       description="Run the scenario's steps, then every order of its [explore] events that the "
                       "'after' constraints allow, breadth-first with de-duplication and symmetry reduction. Reports "
                       "domain counts over all orders, whether the result depends on the order, and the shortest "
                       "trace to each hazard.",
                       epilog="examples:\n  pyiommufd explore scenarios/explore/two-devices.toml\n"
                       "  pyiommufd explore scenarios/explore/hot-unplug.toml --profile linux-6.6 --json\n"
                       "  pyiommufd explore scenarios/bench/intel-8dev-3units.toml --max-states 100000",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    e.add_argument("scenario", help="scenario TOML file with an [explore] table")
    _profile_opts(e)
    _explore_opts(e)
    _engine_opts(e, "explore")
    e.add_argument("--fingerprint-bits", type=int, metavar="B", help="hash compaction: keep a B-bit fingerprint of "
                   "each state instead of its key (less memory; P(a state is omitted) <= n(n-1)/2^(B+1), reported)")
    e.add_argument("--strategy", default="kernel-auto", choices=["kernel-auto", "qemu-style", "cc-aware"],
                   help="how the VMM places a device attached to an IOAS (default: kernel-auto)")
    e.add_argument("--json", action="store_true", help="machine output on stdout (DESIGN.md contract)")
    e.add_argument("--fail-on-hazard", action="store_true", help="exit 1 if any order reaches a hazard")
    e.set_defaults(fn=cmd_explore)

    c = sub.add_parser("compare", help="explore under several profiles / strategies, side by side",
                       description="Explore the scenario under each profile (and user-space strategy) and show "
                       "them side by side: domain counts, order dependence, hazards, optimum.",
                       epilog="examples:\n  pyiommufd compare scenarios/explore/two-devices.toml "
                       "--profiles linux-6.2,linux-6.6,linux-6.12,proposal-upgrade-keep\n"
                       "  pyiommufd compare scenarios/explore/hot-unplug.toml --profiles linux-6.12 "
                       "--strategies kernel-auto,qemu-style,cc-aware --html out/compare.html",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("scenario", help="scenario TOML file with an [explore] table")
    c.add_argument("--profiles", metavar="A,B,...", help="profiles to compare (default: the scenario's 'profiles', "
                   "plus those of --profile-file)")
    _profile_file_opt(c)
    c.add_argument("--strategies", metavar="S,...", help="user-space strategies: kernel-auto, qemu-style, cc-aware")
    _explore_opts(c)
    c.add_argument("--json", action="store_true", help="machine output on stdout")
    c.add_argument("--html", metavar="OUT.html", help="also write a self-contained HTML report")
    c.set_defaults(fn=cmd_compare)

    sw = sub.add_parser("sweep", help="explore every system up to a bound under each policy; verdicts per policy",
                        description="Enumerate every Intel VT-d system with a VM up to --max-devices devices over "
                        "--max-units remapping units (Snoop Control on or off, any iommu-group shape, with and without "
                        "hot-unplug of the devices without CC capability), each shape once up to renaming units and "
                        "devices; explore every attach order of each under each policy (profile or profile+strategy) "
                        "and report per policy the share of systems that are order-dependent, that reach each hazard "
                        "kind and that end with more than the minimal domain count, with the smallest counterexample "
                        "system and trace for each.  See docs/sweep.md.",
                        epilog="examples:\n"
                        "  pyiommufd sweep --max-devices 3 --max-units 2\n"
                        "  pyiommufd sweep --max-devices 6 --max-units 3 --json > sweep.json\n"
                        "  pyiommufd sweep --policies linux-6.12,linux-6.12+cc-aware --html out/sweep.html\n"
                        "  pyiommufd sweep --max-devices 6 --max-units 3 --engine ray --workers 2\n"
                        "  pyiommufd sweep --engine ray --address ray://head:10001 --max-devices 8\n"
                        "  pyiommufd sweep --system 'nosc[1] sc[2] +unplug' --policies linux-6.12+cc-aware\n\n"
                        "A system is written unit by unit: sc[2,1] is a unit with Snoop Control holding a group of two "
                        "devices and a device alone; nosc[1] a unit without it; +unplug adds the hot-unplug events.",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    sw.add_argument("--max-devices", type=int, default=4, metavar="N", help="devices per system, at most (default 4)")
    sw.add_argument("--min-devices", type=int, default=1, metavar="M", help="devices per system, at least (default 1)")
    sw.add_argument("--max-units", type=int, default=3, metavar="U", help="remapping units with devices (default 3)")
    sw.add_argument("--sc", choices=["both", "on", "off"], default="both",
                    help="unit capability: Snoop Control on, off, or both kinds (default both)")
    sw.add_argument("--groups", choices=["all", "own"], default="all",
                    help="group shapes: every partition of a unit's devices (all) or one group per device (own)")
    sw.add_argument("--unplug", choices=["both", "none", "only"], default="both",
                    help="systems with and/or without hot-unplug events (default both)")
    sw.add_argument("--system", action="append", metavar="LABEL", help="sweep only this system (repeatable), "
                    "e.g. 'sc[1] nosc[1] +unplug'")
    sw.add_argument("--policies", metavar="P,...", help="profile or profile+strategy names (default: linux-6.2, "
                    "linux-6.6, linux-6.12, proposal-want-cc, proposal-upgrade-keep, and linux-6.12 with qemu-style "
                    "and cc-aware)")
    sw.add_argument("--profiles", metavar="A,B,...", help="instead of --policies: these profiles ...")
    _profile_file_opt(sw)
    sw.add_argument("--strategies", metavar="S,...", help="... times these strategies (default kernel-auto)")
    sw.add_argument("--max-states", type=int, metavar="N", help="per exploration (truncated ones get no verdict)")
    sw.add_argument("--no-symmetry", action="store_true", help="explore without symmetry reduction")
    _engine_opts(sw, "sweep")
    sw.add_argument("--json", action="store_true", help="machine output on stdout (only JSON; progress on stderr)")
    sw.add_argument("--html", metavar="OUT.html", help="also write a self-contained HTML report")
    sw.add_argument("--brief", action="store_true", help="table and verdicts only, no counterexample traces")
    sw.add_argument("--force", action="store_true", help="run a sweep whose estimated time is beyond the bound "
                    "(1 h); the size and estimate are printed first either way")
    sw.add_argument("-q", "--quiet", action="store_true", help="no size line or progress on stderr")
    sw.set_defaults(fn=cmd_sweep)

    pr = sub.add_parser("profiles", help="list the kernel eras and proposals that can be emulated",
                        description="List the profiles: each a kernel release (or a proposal) as a record of "
                        "switches, with the source each switch was read from (--json shows them all).")
    pr.add_argument("--json", action="store_true")
    _profile_file_opt(pr)
    pr.set_defaults(fn=cmd_profiles)

    d = sub.add_parser("demo", help="run the seed thread's cases under every era and tell the story",
                       description="The October 2023 iommufd thread on cache-coherency, answered by running it: "
                       "each claim, the scenario that tests it, and what each kernel era does.")
    d.add_argument("--json", action="store_true")
    d.set_defaults(fn=cmd_demo)

    i = sub.add_parser("info", help="this host's VFIO devices, IOMMU units and what each profile would make of them",
                       description="On a real host: list the VFIO device cdevs, their iommu groups and remapping units "
                       "with their capabilities (Intel ECAP.SC from sysfs and from IOMMU_GET_HW_INFO after binding each "
                       "device to a fresh iommufd), each device's cache-coherency capability, and the domain counts each "
                       "Linux profile gives when every device is attached to one IOAS, over all attach orders. Exit 3 "
                       "without a usable /dev/iommu.")
    i.add_argument("--json", action="store_true", help="machine output on stdout")
    i.add_argument("--no-bind", action="store_true", help="read sysfs only: do not bind devices for GET_HW_INFO")
    i.add_argument("--no-domain-counts", action="store_true", help="skip the emulator run over attach orders")
    i.set_defaults(fn=cmd_info)

    cf = sub.add_parser("conform", help="run scenarios on the emulator and on real Linux 6.12 in QEMU, diff them",
                        description="Build (once, cached) a Linux 6.12 kernel and boot it under QEMU (TCG) with an "
                        "emulated Intel VT-d and edu devices bound to vfio-pci, once per configuration; the guest runs "
                        "every scenario that fits the configuration through the same client code, the host runs them on "
                        "the emulator (linux-6.12), and each step is compared: result and errno, returned ids, domain "
                        "sharing, page-table contents and cache coherency (the SNP bit of the IOPTEs).  Also checks real "
                        "DMA by an edu device through an IOAS mapping.  Exit 1 on any unexplained disagreement, 3 when "
                        "QEMU or the kernel source is missing.",
                        epilog="examples:\n  pyiommufd conform                       # the whole corpus (make conform)\n"
                        "  pyiommufd conform src/pyiommufd/scenarios/conform/map-overlap.toml --config snoop-on\n"
                        "  pyiommufd conform --list                # which scenario runs where",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    cf.add_argument("scenarios", nargs="*", metavar="SCENARIO", help="scenario files (default: the corpus: "
                    "shipped scenarios that fit, their snoop-control variants, seeded random sequences)")
    cf.add_argument("--config", action="append", metavar="NAME",
                    help="configuration to boot (repeatable): snoop-on, snoop-off, bridge, mock (default: all)")
    cf.add_argument("--random", type=int, default=50, metavar="N",
                    help="random scenarios per family in the default corpus (default 50)")
    cf.add_argument("--seed", type=int, default=0, help="seed of the random scenarios (default 0)")
    cf.add_argument("--no-dma", action="store_true", help="skip the edu DMA check")
    cf.add_argument("--jobs", type=int, default=2, help="VMs booted at once (default 2)")
    cf.add_argument("--timeout", type=float, help="seconds per boot (default 120 + 3 per scenario)")
    cf.add_argument("--cache", metavar="DIR", help="cache directory (default $PYIOMMUFD_CACHE or "
                    "~/.cache/pyiommufd/conform)")
    cf.add_argument("--list", action="store_true", help="only show which scenario runs on which configuration")
    cf.add_argument("--selftest", action="store_true", help="instead: run the kernel's own iommufd selftests "
                    "(iommufd, iommufd_fail_nth) in a VM without an IOMMU; per-case table, JSON written to the cache "
                    "directory as selftest-real-RELEASE.json; exit 1 if a case fails")
    cf.add_argument("--differences-only", action="store_true", help="table rows only for scenarios that differ")
    cf.add_argument("--json", action="store_true", help="machine output on stdout")
    cf.add_argument("--profile", metavar="NAME", help="the profile the emulator side runs (default: the one "
                    "modelling the kernel's release)")
    cf.add_argument("--kernel-source", metavar="PATH", help="the kernel to run: a clean source tree or a tarball "
                    "(default: $PYIOMMUFD_LINUX_TARBALL or Debian's linux-source-6.12); its release (from the "
                    "Makefile) names the default profile; cached per tree")
    _profile_file_opt(cf)
    cf.set_defaults(fn=cmd_conform)

    b = sub.add_parser("bench", help="how fast: emulator ioctls/s, map/unmap scaling, explorer vs SPIN and naive BFS",
                       description="Measure how fast the project does its job, side by side with what a user would "
                       "pick instead, in one run: ioctls/s of a VMM's mix through the client API and the emulated "
                       "transport; map/unmap cost with 10^3 and 10^6 live mappings; the explorer on "
                       "scenarios/bench/ with and without symmetry reduction, against the same model in Promela "
                       "checked by SPIN (spin -a + gcc -O2 + pan) and a naive breadth-first search -- after checking "
                       "that all three count the same states and reach the same verdict.  Reports ratios and which "
                       "goals are met; for a goal not met, a profile of where the time goes.  Times are CPU seconds "
                       "(wall clock beside them in --json).",
                       epilog="examples:\n  pyiommufd bench                 # full run, several minutes\n"
                       "  pyiommufd bench --quick         # small sizes, well under a minute (CI)\n"
                       "  pyiommufd bench --json > out/bench.json\n\n"
                       "SPIN: apt-get install spin (and gcc).  Without them the full run exits 3; --quick runs\n"
                       "and reports spin_* as null with spin_skipped saying why.",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    b.add_argument("--quick", action="store_true", help="small sizes (10^4 mappings instead of 10^6, the hot-unplug "
                   "scenario instead of scenarios/bench/, one repetition)")
    b.add_argument("--json", action="store_true", help="machine output on stdout (progress stays on stderr)")
    b.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    b.set_defaults(fn=cmd_bench)

    m = sub.add_parser("emulate", help="run a real program (C, Rust, Python...) on the emulated kernel",
                       description="Run CMD and its children with /dev/iommu and /dev/vfio/... served by the "
                       "emulated kernel of a profile, through an LD_PRELOAD interposer built with the system C "
                       "compiler on first use (cached in ~/.cache/pyiommufd/emulate).  Everything else the "
                       "program does is real.  Exit status: CMD's own (128+N if it died of signal N); 2 usage or "
                       "a bad --system file; 3 the interposer cannot be built or loaded.",
                       epilog="examples:\n"
                       "  cc $(pyiommufd emulate --cflags) -o two_devices examples/two_devices.c\n"
                       "  pyiommufd emulate -- ./iommufd                      # the kernel's selftest, mock devices\n"
                       "  pyiommufd emulate --system scenarios/thread/noncc-first.toml -- ./my-vmm\n"
                       "  pyiommufd emulate --kernel 6.2 --system sys.toml --trace calls.jsonl -- ./my-vmm\n"
                       "  pyiommufd emulate --system sys.toml --record replay.toml -- ./my-vmm && "
                       "pyiommufd explore replay.toml\n\n"
                       "--system FILE: a scenario file (its [system] and [[devices]] are used) or a file with only "
                       "those tables; device N of [[devices]] is /dev/vfio/devices/vfioN (6.6+) or its group is "
                       "/dev/vfio/N (6.2-6.5).  The mapping is printed on stderr.  See docs/emulate.md.",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _profile_opts(m)
    m.add_argument("--system", metavar="FILE", help="the machine: devices, units, groups (default: none; "
                   "programs make IOMMU_TEST_CMD mock devices themselves)")
    m.add_argument("--trace", metavar="OUT.jsonl", help="one JSON object per emulated call")
    m.add_argument("--record", metavar="OUT.toml", help="write a scenario file replaying the program's calls")
    m.add_argument("-q", "--quiet", action="store_true", help="do not print the device mapping on stderr")
    m.add_argument("--cflags", action="store_true", help="print the compiler flag for the shipped Linux 6.12 "
                   "iommufd.h / vfio.h (cc $(pyiommufd emulate --cflags) ...) and exit")
    m.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD [ARGS...]", help="the program to run")
    m.set_defaults(fn=cmd_emulate)
    return p


def _engine_opts(sp, what: str) -> None:
    sp.add_argument("--engine", choices=["process", "ray"], default="process",
                    help="process: this machine (default); ray: Ray tasks/actors, on a local Ray started for the run "
                    "or the cluster at --address (needs the extra: pip install 'pyiommufd[ray]')")
    sp.add_argument("--address", metavar="ADDR", help="an existing Ray cluster (e.g. ray://head:10001 or auto)")
    sp.add_argument("--workers", type=int, metavar="N", help=(
        "processes on this machine (process engine) or CPUs of the local Ray (default: all cores)" if what == "sweep"
        else "Ray: CPUs of the local Ray and key shards (actors) (default: all cores)"))


def _explore_opts(sp) -> None:
    sp.add_argument("--max-states", type=int, metavar="N", help="stop after N distinct states (then truncated=true)")
    sp.add_argument("--no-symmetry", action="store_true", help="do not merge states that differ by a permutation "
                    "of interchangeable devices")
    sp.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")


def _profile_opts(sp) -> None:
    g = sp.add_mutually_exclusive_group()
    g.add_argument("--profile", metavar="NAME", help=f"kernel era or proposal (default: the scenario's, else "
                   f"{DEFAULT_PROFILE}); see 'pyiommufd profiles'")
    g.add_argument("--kernel", metavar="X.Y[.Z]", help="pick the profile modelling this kernel version")
    _profile_file_opt(sp)


def _profile_file_opt(sp) -> None:
    """--profile-file, shared by every command that takes profiles (main() loads it: _apply_profile_files)."""
    sp.add_argument("--profile-file", action="append", metavar="FILE.toml",
                    help="a profile file (a built-in base plus switches, see docs/profiles.md); its profile is used "
                    "unless --profile names another, and can be named wherever profiles are (repeatable)")


def _say(message: str) -> None:
    """One error message on stderr, as is: not through rich, which wraps at the console width (splitting the
    file name) and would read ':name:' as an emoji code."""
    sys.stderr.write(message.rstrip("\n") + "\n")
    sys.stderr.flush()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    width = None if sys.stdout.isatty() else 120   # pipes and CI logs: no 80-column wrapping
    out = Console(highlight=False, width=width)
    err = Console(stderr=True, highlight=False, width=width)
    if not getattr(args, "fn", None):
        parser.print_help()
        return 2
    try:
        _apply_profile_files(args)
        return args.fn(args, out, err)
    except (ScenarioError, UsageError) as e:
        _say(f"pyiommufd: error: {e}")
        return 2
    except EmulationGap as e:
        _say(f"pyiommufd: not modelled: {e}")
        return 2
    except EnvironmentMissing as e:
        _say(f"pyiommufd: {e}")
        return 3
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130
    except BrokenPipeError:
        return 0
