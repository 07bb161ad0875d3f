"""Bad input pins: every malformed scenario exits 2 with one clear line on stderr, never a traceback.

``tests/malformed/*.toml``: each file's first line is ``# expect: <substring>``, a substring the
error message must contain (it names the step / section and the offending key or value).  Files
that cannot carry that comment (bytes that are not UTF-8, a missing file, a directory) are made
in ``tmp_path`` below.  ``tests/oddbutvalid/*.toml`` are things the kernel can be asked (zero
lengths, unaligned IOVAs, surprising orders, an empty file): they run, exit 0 or 1, never 2.

A hypothesis test feeds ``scenario.parse`` random documents built from the known keys: it returns
a Scenario or raises ScenarioError, nothing else.
"""
import copy
import os
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import ROOT
from pyiommufd import scenario as sc
from pyiommufd.errors import ScenarioError

MALFORMED = sorted((ROOT / "tests" / "malformed").glob("*.toml"))
ODD = sorted((ROOT / "tests" / "oddbutvalid").glob("*.toml"))
GOOD = ROOT / "src" / "pyiommufd" / "scenarios" / "thread" / "noncc-first.toml"


def cli(*args):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    env.pop("PYTHONSTARTUP", None)
    return subprocess.run([sys.executable, "-m", "pyiommufd", *map(str, args)], capture_output=True, text=True,
                          errors="replace", cwd=ROOT, env=env, timeout=120)


def expected(path) -> str:
    first = path.read_bytes().split(b"\n", 1)[0].decode()
    assert first.startswith("# expect: "), f"{path.name}: first line must be '# expect: <substring>'"
    return first[len("# expect: "):].strip()


def assert_bad_input(r, path, needle):
    assert "Traceback" not in r.stdout + r.stderr, r.stderr
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, f"want one line on stderr, got:\n{r.stderr}"
    msg = lines[0]
    assert msg.startswith("pyiommufd: error: "), msg
    assert str(path) in msg, f"message does not name the file: {msg}"
    assert needle in msg, f"{needle!r} not in {msg!r}"
    assert len(msg) < 400, f"message too long ({len(msg)} chars)"


def test_corpus_size():
    assert len(MALFORMED) >= 60
    assert len(ODD) >= 3


@pytest.mark.parametrize("path", MALFORMED, ids=[p.stem for p in MALFORMED])
def test_malformed_file(path):
    assert_bad_input(cli("run", path), path, expected(path))


@pytest.mark.parametrize("path", MALFORMED, ids=[p.stem for p in MALFORMED])
def test_malformed_file_in_process(path):
    """The loader itself says the same (faster to debug than the subprocess)."""
    with pytest.raises(ScenarioError) as e:
        sc.load(path)
    assert expected(path) in str(e.value)
    assert str(path) in str(e.value)


FILE_CASES = {
    "not-utf8": (b'name = "caf\xe9"\n', "not UTF-8 text (byte 0xe9 at line 1"),
    "not-utf8-line3": (b'# a comment\n\n[system]\niommu = "intel\xff\xfe"\n', "line 4"),
    "utf16": ("name = 'x'\n".encode("utf-16"), "not UTF-8 text"),
    "nul-byte": (b'name = "a"\n\x00\n', "invalid TOML"),
    "binary": (bytes(range(256)), "not UTF-8 text"),
}


@pytest.mark.parametrize("name", FILE_CASES)
def test_malformed_bytes(tmp_path, name):
    data, needle = FILE_CASES[name]
    p = tmp_path / f"{name}.toml"
    p.write_bytes(data)
    assert_bad_input(cli("run", p), p, needle)


def test_missing_file(tmp_path):
    p = tmp_path / "nope.toml"
    assert_bad_input(cli("run", p), p, "no such file")


def test_directory(tmp_path):
    assert_bad_input(cli("run", tmp_path), tmp_path, "is a directory")


def test_path_through_a_file(tmp_path):
    f = tmp_path / "f.toml"
    f.write_text("")
    p = f / "x.toml"
    assert_bad_input(cli("run", p), p, "cannot read")


def test_fifo_is_refused_at_once(tmp_path):
    """Reading a FIFO with no writer would block for ever: refused before it is opened for reading."""
    p = tmp_path / "pipe.toml"
    os.mkfifo(p)
    for cmd in ("run", "explore", "compare"):
        assert_bad_input(cli(cmd, p), p, "is a FIFO (named pipe), not a regular file")


def test_endless_device_is_refused():
    assert_bad_input(cli("run", "/dev/zero"), "/dev/zero", "is a character device, not a regular file")


def test_oversized_file_is_refused(tmp_path):
    p = tmp_path / "big.toml"
    p.write_bytes(b"# " + b"x" * sc.MAX_SCENARIO_BYTES + b"\n")
    assert_bad_input(cli("run", p), p, f"a scenario file is at most {sc.MAX_SCENARIO_BYTES:,} bytes")
    ok = tmp_path / "max.toml"     # exactly the limit is fine (a comment: an empty scenario)
    ok.write_bytes(b"#" + b"x" * (sc.MAX_SCENARIO_BYTES - 2) + b"\n")
    assert len(ok.read_bytes()) == sc.MAX_SCENARIO_BYTES
    assert sc.load(ok).steps == []


def test_symlink_to_a_device_is_refused(tmp_path):
    p = tmp_path / "link.toml"
    p.symlink_to("/dev/zero")
    with pytest.raises(ScenarioError, match="is a character device"):
        sc.load(p)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads anything")
def test_unreadable(tmp_path):
    p = tmp_path / "secret.toml"
    p.write_text("")
    p.chmod(0)
    assert_bad_input(cli("run", p), p, "cannot read")


@pytest.mark.parametrize("args,needle", [
    (("--profile", "linux-9.9"), "unknown profile 'linux-9.9'"),
    (("--profile", ""), "unknown profile ''"),
    (("--kernel", "5.10"), "iommufd first shipped in 6.2"),
    (("--kernel", "six"), "not of the form X.Y"),
    (("--kernel", "6.12.x"), "not of the form X.Y"),
    (("--kernel", "6.12", "--profile", "linux-6.12"), "not allowed with"),
    (("--profile",), "expected one argument"),
    (("--frobnicate",), "unrecognized arguments"),
])
def test_cli_level_errors(args, needle):
    r = cli("run", GOOD, *args)
    assert "Traceback" not in r.stdout + r.stderr, r.stderr
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert r.stdout == ""
    assert needle in r.stderr


def test_bad_file_reported_before_bad_profile(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text('[[steps]]\nop = "nope"\n')
    assert_bad_input(cli("run", p, "--profile", "linux-9.9"), p, "unknown op 'nope'")


# Known emulator gaps (not the validator's): the scenario is valid, the model crashes on it.
ODD_XFAIL: dict[str, str] = {}


@pytest.mark.parametrize("path", [pytest.param(p, marks=pytest.mark.xfail(reason=ODD_XFAIL[p.stem], strict=True))
                                  if p.stem in ODD_XFAIL else p for p in ODD], ids=[p.stem for p in ODD])
def test_odd_but_valid_runs(path):
    """Whatever the kernel can be asked is asked: these run to the end (0 or 1), never exit 2."""
    r = cli("run", path, "--json")
    assert "Traceback" not in r.stdout + r.stderr, r.stderr
    assert r.returncode in (0, 1), (r.returncode, r.stderr)
    assert r.stdout.lstrip().startswith("{")


def test_empty_scenario_runs_zero_steps(tmp_path):
    p = tmp_path / "empty.toml"
    p.write_text("")
    s = sc.load(p)
    assert s.steps == [] and s.events == []
    assert cli("run", p).returncode == 0


# -- property: parse() returns a Scenario or raises ScenarioError, nothing else -----------------------

def _huge():  # (ints past 4300 decimal digits break hypothesis' own reporting: see test_huge_ints below)
    return st.sampled_from([10 ** 30, -(10 ** 30), 1 << 64, (1 << 64) - 1, 1 << 32, (1 << 32) - 1, 1 << 31, -1, 0])


scalars = st.one_of(
    st.booleans(), st.integers(), _huge(), st.floats(allow_nan=True),
    st.text(max_size=8), st.sampled_from(["", "gpu", "nic", "ioas", "dmar0", "unit0", "EINVAL", "EOPNOTSUPP",
                                          "linux-6.12", "linux-6.2", "NEST_PARENT", "attach:gpu", "bind:gpu",
                                          "noncc-device-in-cc-domain", "intel", "first-level", "x" * 300]),
)
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)), max_leaves=8)

STEP_KEYS = sorted({k for spec in sc.OPS.values() for k in spec} | sc.COMMON_KEYS | {"after", "label"})


def _maybe(key_strategy, value_strategy, max_size=5):
    return st.dictionaries(key_strategy, value_strategy, max_size=max_size)


expects = st.one_of(values, _maybe(st.sampled_from(sorted(sc.EXPECT_KEYS) + ["bogus"]), values, 4))
step_values = st.one_of(values, expects)
steps = st.one_of(
    st.fixed_dictionaries({"op": st.sampled_from(sorted(sc.OPS))},
                          optional={k: (expects if k == "expect" else
                                        _maybe(st.sampled_from(["linux-6.2", "linux-6.12", "nope"]), expects, 2)
                                        if k == "expect_by_profile" else values) for k in STEP_KEYS if k != "op"}),
    _maybe(st.sampled_from(STEP_KEYS), step_values),
    values)
units = st.one_of(values, st.lists(st.one_of(
    _maybe(st.sampled_from(["name", "snoop_control", "nesting", "dirty_tracking", "bogus"]), values, 3),
    st.fixed_dictionaries({"name": st.sampled_from(["dmar0", "dmar1", "unit0"])},
                          optional={"snoop_control": st.booleans()})), max_size=3))
devices = st.one_of(values, st.lists(st.one_of(
    _maybe(st.sampled_from(["name", "unit", "group", "canwbs", "bogus"]), values, 3),
    st.fixed_dictionaries({"name": st.sampled_from(["gpu", "nic", ""])},
                          optional={"unit": st.sampled_from(["dmar0", "dmar1", "unit0", "x"]),
                                    "group": st.sampled_from(["g", "h"]), "canwbs": st.booleans()})), max_size=3))
system = st.one_of(values, st.fixed_dictionaries({}, optional={
    "iommu": st.one_of(st.sampled_from(["intel", "amd", "smmuv3", "virtio", "mock", "arm"]), values),
    "units": units, "kvm": st.one_of(st.booleans(), values),
    "intel_page_table": st.one_of(st.sampled_from(["second-level", "first-level"]), values), "bogus": values}))
explore = st.one_of(values, st.fixed_dictionaries({}, optional={
    "events": st.one_of(values, st.lists(steps, max_size=4)), "bogus": values}))
wild_documents = st.fixed_dictionaries({}, optional={
    "name": values, "description": values,
    "profile": st.one_of(st.sampled_from(["linux-6.12", "linux-6.2", "linux-9"]), values),
    "profiles": st.one_of(st.lists(st.sampled_from(["linux-6.12", "linux-6.6", "nope"]), max_size=3), values),
    "system": system, "devices": devices, "steps": st.one_of(st.lists(steps, max_size=6), values),
    "explore": explore, "bogus": values})

# Well-formed documents (every key of its right type), then up to three mutations anywhere in the tree: these
# get past the first checks, so the deeper ones (names, refs, expect, after) are reached too.
NAMES, LABELS = ["ioas", "h", "d"], ["attach:gpu", "bind:gpu", "detach:nic", "bind:1", "x"]
TYPED = {
    "device": st.sampled_from(["gpu", "nic", "tpu"]),
    "ref": st.one_of(st.sampled_from(NAMES), st.integers(0, sc.U32 + 1)),
    "name": st.sampled_from(NAMES),
    "u64": st.one_of(st.integers(0, sc.U64 + 1), st.sampled_from([0, 0x1000, 0x1001])),
    "bool": st.booleans(),
    "flags": st.lists(st.sampled_from(sorted(sc.uapi.HWPT_ALLOC_FLAGS) + ["NOPE"]), max_size=2),
}
expect_wf = st.fixed_dictionaries({}, optional={
    "ok": st.booleans(), "errno": st.sampled_from(["EINVAL", "EBUSY", "ENOTSUP", "EOPNOTSUPP", "EFOO"]),
    "pt": TYPED["ref"], "hazards": st.lists(st.sampled_from(list(sc.KINDS) + ["nope"]), max_size=2),
    "domains": st.integers(0, 4)})


@st.composite
def wf_step(draw, event=False):
    op = draw(st.sampled_from(sorted(sc.OPS)))
    d = {"op": op}
    for k, (kind, required) in sc.OPS[op].items():
        if required or draw(st.booleans()):
            d[k] = draw(TYPED[kind])
    if draw(st.booleans()):
        d["expect"] = draw(expect_wf)
    if draw(st.integers(0, 4)) == 0:
        d["expect_by_profile"] = draw(st.dictionaries(st.sampled_from(["linux-6.2", "linux-6.12"]), expect_wf,
                                                      max_size=2))
    if event and draw(st.booleans()):
        d["after"] = draw(st.one_of(st.sampled_from(LABELS), st.lists(st.sampled_from(LABELS), max_size=2)))
    if event and draw(st.integers(0, 3)) == 0:
        d["label"] = draw(st.sampled_from(LABELS))
    return d


wf_documents = st.fixed_dictionaries({
    "system": st.fixed_dictionaries({"iommu": st.sampled_from(["intel", "amd", "smmuv3", "virtio", "mock"]),
                                     "units": st.just([{"name": "dmar0"}, {"name": "dmar1", "snoop_control": False}])},
                                    optional={"kvm": st.booleans(),
                                              "intel_page_table": st.sampled_from(["second-level", "first-level"])}),
    "devices": st.just([{"name": "gpu", "unit": "dmar1"}, {"name": "nic", "unit": "dmar0", "group": "g"}]),
    "steps": st.lists(wf_step(), max_size=8),
}, optional={"profile": st.sampled_from(["linux-6.12", "linux-6.2"]), "name": st.text(max_size=5),
             "profiles": st.lists(st.sampled_from(["linux-6.12", "linux-6.6", "proposal-want-cc"]), min_size=1,
                                  max_size=2),
             "explore": st.fixed_dictionaries({"events": st.lists(wf_step(event=True), max_size=4)})})


def _slots(node):
    """(container, key) of every value in the tree."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for k, v in list(items):
        yield node, k
        yield from _slots(v)


@st.composite
def mutated_documents(draw):
    doc = copy.deepcopy(draw(wf_documents))   # (st.just values are shared between examples)
    for _ in range(draw(st.integers(0, 3))):
        slots = list(_slots(doc))
        if not slots:
            break
        parent, key = draw(st.sampled_from(slots))
        action = draw(st.sampled_from(["replace", "delete", "add"]))
        if action == "replace":
            parent[key] = draw(values)
        elif action == "delete":
            del parent[key]
        elif isinstance(parent, dict):
            parent[draw(st.sampled_from(["bogus", "as", "after", "label", *STEP_KEYS]))] = draw(values)
    return doc


documents = st.one_of(wild_documents, mutated_documents())


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents)
def test_parse_never_raises_anything_but_scenario_error(doc):
    try:
        s = sc.parse(doc, "gen.toml")
    except ScenarioError as e:
        msg = str(e)
        assert msg.startswith("gen.toml: ") and "\n" not in msg and len(msg) < 1000, msg
    else:
        assert isinstance(s, sc.Scenario)


HUGE = 1 << 20000   # repr() of this raises ValueError (more than 4300 decimal digits)


@pytest.mark.parametrize("doc", [
    {"name": HUGE}, {"profile": -HUGE}, {"system": {"kvm": HUGE}}, {"system": {"iommu": HUGE}},
    {"devices": [{"name": "gpu", "canwbs": HUGE}]},
    {"devices": [{"name": "gpu"}], "steps": [{"op": "map", "ioas": HUGE, "iova": 0, "length": 1}]},
    {"devices": [{"name": "gpu"}], "steps": [{"op": "map", "ioas": 1, "iova": -HUGE, "length": 1}]},
    {"devices": [{"name": "gpu"}], "steps": [{"op": "dma", "device": "gpu", "iova": 0, "length": 1, "snoop": HUGE}]},
    {"steps": [{"op": HUGE}]}, {"steps": [{"op": "ioas_alloc", "expect": {"domains": HUGE}}]},
    {"steps": [{"op": "ioas_alloc", "expect": {"ok": -HUGE}}]},
], ids=lambda d: str(sorted(d)))
def test_huge_ints(doc):
    with pytest.raises(ScenarioError) as e:
        sc.parse(doc, "gen.toml")
    assert len(str(e.value)) < 400
