"""Command line.  argparse lives only here; output formats are pure functions in report/.

Exit codes: 0 success / expectations met, 1 an expectation failed (or a hazard with
--fail-on-hazard), 2 bad input or usage, 3 the environment lacks what is needed.
"""
from __future__ import annotations

import argparse
import json
import sys

from rich.console import Console

from . import __version__
from .errors import EmulationGap, EnvironmentMissing, ScenarioError
from .profiles import DEFAULT_PROFILE, PROFILES, get_profile, profile_for_kernel

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
    res = explore(sc, _profile_arg(args, sc.profile), args.strategy, **_explore_kw(args, err))
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
    profiles = [p.strip() for p in (args.profiles or ",".join(sc.profiles)).split(",") if p.strip()]
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


def cmd_profiles(args, out: Console, err: Console) -> int:
    from .report.text import profiles_report
    if args.json:
        print(json.dumps({"default": DEFAULT_PROFILE, "profiles": [p.to_json() for p in PROFILES.values()]},
                         indent=2))
    else:
        profiles_report(PROFILES.values(), out)
    return 0


def cmd_demo(args, out: Console, err: Console) -> int:
    from .demo import demo
    return demo(out, as_json=args.json)


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
    c.add_argument("--profiles", metavar="A,B,...", help="profiles to compare (default: the scenario's 'profiles')")
    c.add_argument("--strategies", metavar="S,...", help="user-space strategies: kernel-auto, qemu-style, cc-aware")
    _explore_opts(c)
    c.add_argument("--json", action="store_true", help="machine output on stdout")
    c.add_argument("--html", metavar="OUT.html", help="also write a self-contained HTML report")
    c.set_defaults(fn=cmd_compare)

    pr = sub.add_parser("profiles", help="list the kernel eras and proposals that can be emulated",
                        description="List the profiles: each a kernel release (or a proposal) as a record of "
                        "switches, with the source each switch was read from (--json shows them all).")
    pr.add_argument("--json", action="store_true")
    pr.set_defaults(fn=cmd_profiles)

    d = sub.add_parser("demo", help="run the seed thread's cases under every era and tell the story",
                       description="The October 2023 iommufd thread on cache-coherency, answered by running it: "
                       "each claim, the scenario that tests it, and what each kernel era does.")
    d.add_argument("--json", action="store_true")
    d.set_defaults(fn=cmd_demo)
    return p


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
