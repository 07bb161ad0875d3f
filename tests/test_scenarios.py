"""Every scenario file, under every profile it names: expectations hold and the JSON matches the contract."""
import json
from pathlib import Path

import jsonschema
import pytest

from conftest import ROOT, scenario_files
from pyiommufd.runner import run
from pyiommufd.scenario import load

SCHEMA = json.loads((ROOT / "tests" / "contract" / "run.schema.json").read_text())
CASES = [(f, p) for f in scenario_files() if "bench" not in f.parts for p in load(f).profiles]


def test_corpus_is_not_empty():
    assert len(CASES) >= 30


@pytest.mark.parametrize("path,profile", CASES, ids=[f"{f.parent.name}/{f.stem}@{p}" for f, p in CASES])
def test_scenario_expectations(path, profile):
    res = run(load(path), profile)
    failed = [s for s in res["steps"] if s["expect_met"] is False]
    assert res["ok"], f"unmet expectations: {failed}"
    jsonschema.validate(json.loads(json.dumps(res)), SCHEMA)
    for s in res["steps"]:
        assert s["ok"] == (s["errno"] is None)


def test_contract_copy_matches_shared():
    shared = ROOT.parent / "shared" / "contract"
    if not shared.is_dir():
        pytest.skip("../shared not present")
    for f in shared.glob("*.json"):
        assert json.loads(f.read_text()) == json.loads((ROOT / "tests" / "contract" / f.name).read_text())


def test_expect_failure_is_reported(tmp_path):
    p = tmp_path / "x.toml"
    p.write_text('[[devices]]\nname="d"\n[[steps]]\nop="ioas_alloc"\nexpect={errno="EINVAL"}\n')
    res = run(load(p))
    assert res["ok"] is False and res["steps"][0]["expect_met"] is False
