"""The Ray engine on a local Ray with 2 workers: explorations sharded over actors and sweeps as tasks give
exactly what the in-process engines give.  Skipped when Ray is not installed (pip install 'pyiommufd[ray]')."""
import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT, SCENARIOS

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")   # single-node Ray on 127.0.0.1 only
ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'pyiommufd[ray]' (or 'ray>=2')")

from test_sweep import same

from pyiommufd.distributed import RayEngine, ray_explore, ray_session
from pyiommufd.explore import explore
from pyiommufd.scenario import load
from pyiommufd.sweep import SystemShape, enumerate_systems, parse_policies, run_sweep, scenario_for

HOT = load(SCENARIOS / "explore" / "hot-unplug.toml")
BENCH = load(SCENARIOS / "bench" / "intel-8dev-3units.toml")


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    """One local Ray with 2 CPUs for the module (starting one costs seconds)."""
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING",
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT / "src")}})
    assert {n["NodeManagerAddress"] for n in ray.nodes()} == {"127.0.0.1"}
    yield
    ray.shutdown()


def test_ray_explore_equals_in_process():
    cases = [(HOT, "linux-6.2", "kernel-auto"), (HOT, "linux-6.12", "kernel-auto"), (HOT, "linux-6.12", "cc-aware"),
             (BENCH, "linux-6.12", "kernel-auto"),
             (scenario_for(SystemShape.from_label("nosc[2,1] sc[1] +unplug")), "linux-6.6", "kernel-auto")]
    for sc, profile, strategy in cases:
        a = explore(sc, profile, strategy)
        b = ray_explore(sc, profile, strategy)
        assert same(a, b) == {}, (sc.name, profile, strategy)
        assert b["engine"]["name"] == "ray" and b["engine"]["shards"] == 2
        assert b["engine"]["states_sent_between_shards"] > 0


def test_ray_explore_one_shard_truncation_and_fingerprints():
    assert same(explore(HOT, "linux-6.12"), ray_explore(HOT, "linux-6.12", shards=1)) == {}
    assert same(explore(HOT, "linux-6.12", max_states=13), ray_explore(HOT, "linux-6.12", max_states=13)) == {}
    r = ray_explore(BENCH, "linux-6.2", fingerprint_bits=64)
    assert same(explore(BENCH, "linux-6.2"), r) == {} and r["fingerprint"]["bits"] == 64


def test_ray_sweep_equals_in_process():
    shapes = enumerate_systems(3, 2)
    a = run_sweep(shapes, parse_policies(), jobs=1)
    b = run_sweep(shapes, parse_policies(), engine=RayEngine())
    assert b["engine"]["engine"] == "ray" and b["engine"]["workers"] == 2
    assert a["policies"] == b["policies"] and a["systems"] == b["systems"] and a["verdicts"] == b["verdicts"]


def test_session_reuses_the_callers_ray():
    with ray_session() as (r, info):
        assert r is ray and info["started"] is False and info["workers"] == 2


def test_cli_explore_engine_ray_starts_its_own_ray():
    """Through the real entry point, which starts (and stops) a local Ray of its own."""
    env = {"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"}
    r = subprocess.run([sys.executable, "-m", "pyiommufd", "explore", "scenarios/explore/hot-unplug.toml",
                        "--engine", "ray", "--workers", "2", "--json", "-q"], check=False, capture_output=True, text=True,
                       cwd=ROOT, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert same(res, explore(HOT, "linux-6.12")) == {}
    assert res["engine"]["started"] is True and res["engine"]["workers"] == 2
