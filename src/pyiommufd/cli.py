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
    if getattr(args, "kernel", None) and getattr(args, "profile", None):
        raise UsageError("--profile and --kernel name the same thing; give one")
    if getattr(args, "kernel", None):
        try:
            return profile_for_kernel(args.kernel).name
        except ValueError as e:
            raise UsageError(str(e)) from None
    name = getattr(args, "profile", None) or scenario_profile or DEFAULT_PROFILE
    try:
        return get_profile(name).name
    except KeyError as e:
        raise UsageError(e.args[0]) from None


def cmd_run(args, out: Console, err: Console) -> int:
    from .report.text import run_report
    from .runner import run
    from .scenario import load
    sc = load(args.scenario)
    res = run(sc, _profile_arg(args, sc.profile))
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        run_report(res, out)
    if not res["ok"]:
        return 1
    if args.fail_on_hazard and res["final"]["hazards"]:
        return 1
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
    r.set_defaults(fn=cmd_run)

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


def _profile_opts(sp) -> None:
    g = sp.add_mutually_exclusive_group()
    g.add_argument("--profile", metavar="NAME", help=f"kernel era or proposal (default: the scenario's, else "
                   f"{DEFAULT_PROFILE}); see 'pyiommufd profiles'")
    g.add_argument("--kernel", metavar="X.Y[.Z]", help="pick the profile modelling this kernel version")


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
        err.print(f"pyiommufd: error: {e}", markup=False)
        return 2
    except EmulationGap as e:
        err.print(f"pyiommufd: not modelled: {e}", markup=False)
        return 2
    except EnvironmentMissing as e:
        err.print(f"pyiommufd: {e}", markup=False)
        return 3
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130
    except BrokenPipeError:
        return 0
