"""The CLI through its real entry point (python -m pyiommufd), as a user runs it."""
import json
import subprocess
import sys

import jsonschema
import pytest

from conftest import ROOT

SCHEMA = json.loads((ROOT / "tests" / "contract" / "run.schema.json").read_text())


def cli(*args, cwd=ROOT):
    env = {"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-m", "pyiommufd", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=120)


def test_run_json_contract():
    r = cli("run", "scenarios/thread/noncc-first.toml", "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    jsonschema.validate(res, SCHEMA)
    assert res["profile"] == "linux-6.12"
    assert len(res["final"]["hwpts"]) == 1


def test_kernel_flag_picks_profile():
    r = cli("run", "scenarios/thread/noncc-first.toml", "--kernel", "6.6.3", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["profile"] == "linux-6.6"


def test_expectation_failure_exits_1(tmp_path):
    p = tmp_path / "x.toml"
    p.write_text('[[devices]]\nname = "d"\n[[steps]]\nop = "ioas_alloc"\nexpect = { errno = "EINVAL" }\n')
    r = cli("run", str(p), "--json")
    assert r.returncode == 1
    assert json.loads(r.stdout)["ok"] is False


def test_fail_on_hazard():
    r = cli("run", "scenarios/hazards/kvm-hot-unplug.toml", "--fail-on-hazard")
    assert r.returncode == 1
    assert "kvm-coherent-but-noncoherent-dma" in r.stdout


@pytest.mark.parametrize("args,needle", [
    (("run", "nope.toml"), "no such file"),
    (("run", "scenarios/thread/noncc-first.toml", "--profile", "linux-9.9"), "unknown profile"),
    (("run", "scenarios/thread/noncc-first.toml", "--kernel", "5.10"), "iommufd first shipped in 6.2"),
    (("run", "scenarios/thread/noncc-first.toml", "--kernel", "six"), "not of the form"),
    (("run",), "required"),
    (("frobnicate",), "invalid choice"),
])
def test_bad_input_exits_2_without_traceback(args, needle):
    r = cli(*args)
    assert r.returncode == 2
    assert needle in r.stderr
    assert "Traceback" not in r.stderr + r.stdout


def test_profiles_json_lists_contract_names():
    r = cli("profiles", "--json")
    names = {p["name"] for p in json.loads(r.stdout)["profiles"]}
    assert {"linux-6.2", "linux-6.6", "linux-6.6.y", "linux-6.7", "linux-6.12", "linux-6.13",
            "proposal-want-cc", "proposal-upgrade-keep"} <= names


def test_demo_runs_and_tells_the_story():
    r = cli("demo")
    assert r.returncode == 0, r.stderr
    assert "perfectly fine for the 2nd device" in r.stdout
    assert "linux-6.12" in r.stdout


def test_demo_explains_each_quote_on_its_own():
    """Each claim runs scenarios of its own, and what is printed under it is not another claim's text."""
    from pyiommufd.demo import STORY
    r = cli("demo", "--json")
    assert r.returncode == 0, r.stderr
    claims = json.loads(r.stdout)["claims"]
    assert [c["claim"] for c in claims] == [s[0] for s in STORY]
    scenarios = [s for c in claims for s in c["scenarios"]]
    assert len(scenarios) == len(set(scenarios)), "two claims share a scenario"
    explanations = [c["explanation"] for c in claims]
    assert len(set(explanations)) == len(claims)
    for c in claims:
        for other in claims:
            assert other["claim"][:40] not in c["explanation"], (c["who"], other["claim"])
    first = claims[0]   # Jason: "does not want CC" -- only the proposed flag has that input: 2 domains there
    assert first["profiles"]["proposal-want-cc"]["summary"].startswith("2 domains")
    assert all(first["profiles"][p]["summary"] == "1 domain [C]" for p in ("linux-6.2", "linux-6.6", "linux-6.12"))
    assert "the next scenario" in first["explanation"] and first["scenario"] == "scenarios/thread/does-not-want-cc.toml"
    assert claims[1]["scenarios"] == ["scenarios/thread/noncc-first.toml"]
    text = cli("demo").stdout
    assert text.count("perfectly fine for the 2nd device") == 1   # the quote once, not again as its explanation


def test_help_teaches_with_examples():
    r = cli("run", "--help")
    assert r.returncode == 0 and "examples:" in r.stdout


def test_readme_client_example_runs():
    import re
    code = re.search(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"}).stdout
    assert out.split() == ["gpu", "->", "HWPT", "3", "nic", "->", "HWPT", "3"]
