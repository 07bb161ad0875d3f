"""Profile files (DESIGN.md "Profile files"): loading, every rejection, and --profile-file in the commands."""
import dataclasses
import json
import os

import pytest

from pyiommufd import profiles
from pyiommufd.profiles import PROFILES, ProfileFileError, load_profile_file, profile_from_json

from test_cli import cli

# The built-in proposal-upgrade-keep, written as a file on linux-6.12.
UPGRADE = """name = "my-upgrade"
summary = "6.12 with upgrade-on-attach restored"
base = "linux-6.12"
[switches]
upgrade_on_attach = true
upgrade_on_replace = true
[sources]
upgrade_on_attach = "my patch, iommufd/device.c iommufd_hw_pagetable_attach"
"""


def write(tmp_path, text, name="p.toml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_load_overrides_only_the_named_switches(tmp_path):
    p = load_profile_file(write(tmp_path, UPGRADE))
    base = PROFILES["linux-6.12"]
    assert p.name == "my-upgrade" and p.summary.startswith("6.12 with")
    assert p.upgrade_on_attach and p.upgrade_on_replace
    same = {f.name for f in dataclasses.fields(p)} - {"name", "summary", "sources", "upgrade_on_attach",
                                                      "upgrade_on_replace"}
    assert all(getattr(p, f) == getattr(base, f) for f in same)       # era and kernel too: the model reads them
    assert p.sources["upgrade_on_attach"].startswith("my patch")
    assert "no source given" in p.sources["upgrade_on_replace"]
    assert profile_from_json(p.to_json()) == p


def test_none_layout_and_errno_switches(tmp_path):
    p = load_profile_file(write(tmp_path, 'name = "x"\nbase = "linux-6.12"\n[switches]\nhw_info = "none"\n'
                                          'group_conflict_errno = "EBUSY"\n'))
    assert p.hw_info is None and p.group_conflict_errno == "EBUSY"


@pytest.mark.parametrize("text, words", [
    ('name = "x"\nbase = "linux-9.9"\n', ["unknown base 'linux-9.9'", "linux-6.12", "linux-6.2"]),
    ('name = "x"\nbase = "linux-6.12"\n[switches]\nupgrade_on_atach = true\n',
     ["unknown switch(es) upgrade_on_atach", "upgrade_on_attach", "cc_at_alloc"]),
    ('name = "x"\nbase = "linux-6.12"\n[switches]\nupgrade_on_attach = "yes"\n', ["must be true or false"]),
    ('name = "x"\nbase = "linux-6.12"\n[switches]\nid_bits = true\n', ["id_bits", "an integer"]),
    ('name = "x"\nbase = "linux-6.12"\n[switches]\nhwpt_alloc = "6.7"\n', ["'6.6', '6.8', '6.12'", "'none'"]),
    ('name = "x"\nbase = "linux-6.12"\n[switches]\ngroup_conflict_errno = "EWHAT"\n', ["errno name"]),
    ('name = "linux-6.6"\nbase = "linux-6.12"\n', ["shadows a built-in", "linux-6.12"]),
    ('base = "linux-6.12"\n', ["'name' (a string) is required"]),
    ('name = "x"\nbase = "linux-6.12"\nkernal = "6.12"\n', ["unknown key(s) kernal", "switches"]),
    ('name = "x"\nbase = "linux-6.12"\n[switches]\nname = "y"\n', ["unknown switch(es) name"]),
    ('name = "x"\nbase = "linux-6.12"\n[sources]\nnesting = "z"\n', ["not overridden in [switches]"]),
    ('name = "x"\nbase = "linux-6.12"\nswitches = 3\n', ["'switches' must be a table"]),
    ('name = "x"\nbase = \n', ["not TOML"]),
])
def test_rejections_name_the_known_ones(tmp_path, text, words):
    with pytest.raises(ProfileFileError) as e:
        load_profile_file(write(tmp_path, text))
    for w in words:
        assert w in str(e.value)
    assert str(tmp_path / "p.toml") in str(e.value)


def test_missing_file(tmp_path):
    with pytest.raises(ProfileFileError, match="No such file"):
        load_profile_file(tmp_path / "none.toml")


def test_register_refuses_a_second_definition(tmp_path, monkeypatch):
    monkeypatch.setattr(profiles, "PROFILES", dict(PROFILES))
    monkeypatch.setenv(profiles.PROFILE_FILES_ENV, "")
    profiles.register_profile_file(write(tmp_path, UPGRADE))
    profiles.register_profile_file(write(tmp_path, UPGRADE))        # the same again: fine
    assert os.environ[profiles.PROFILE_FILES_ENV] == str(tmp_path / "p.toml")
    with pytest.raises(ProfileFileError, match="two different profiles"):
        profiles.register_profile_file(write(tmp_path, UPGRADE.replace("true", "false", 1), "q.toml"))


# -- the commands -------------------------------------------------------------------------------------
def test_run_with_a_profile_file_behaves_as_the_same_builtin(tmp_path):
    f = write(tmp_path, UPGRADE)
    a = cli("run", "scenarios/thread/noncc-first.toml", "--profile-file", str(f), "--json")
    b = cli("run", "scenarios/thread/noncc-first.toml", "--profile", "proposal-upgrade-keep", "--json")
    c = cli("run", "scenarios/thread/noncc-first.toml", "--json")
    assert {a.returncode, b.returncode, c.returncode} <= {0, 1}, a.stderr
    ra, rb, rc = (json.loads(x.stdout) for x in (a, b, c))
    assert ra["profile"] == "my-upgrade"

    def behaviour(r):   # expectations are keyed by profile name (expect_by_profile): compare what happened
        return [{k: v for k, v in s.items() if not k.startswith("expect")} for s in r["steps"]], r["final"]
    assert behaviour(ra) == behaviour(rb)     # the file reproduces the built-in proposal step for step
    assert behaviour(ra) != behaviour(rc)     # and differs from its base: the switch took effect


def test_bad_profile_file_is_exit_2_on_every_command(tmp_path):
    f = str(write(tmp_path, 'name = "x"\nbase = "linux-6.12"\n[switches]\nbogus = 1\n'))
    sc = "scenarios/thread/noncc-first.toml"
    for argv in (["run", sc], ["explore", sc], ["compare", "scenarios/explore/hot-unplug.toml"], ["sweep", "--system", "sc[1]"], ["profiles"],
                 ["conform", "--list"]):
        r = cli(*argv, "--profile-file", f)
        assert r.returncode == 2, (argv, r.stderr)
        assert "unknown switch(es) bogus" in r.stderr and "upgrade_on_attach" in r.stderr, argv


def test_profiles_command_shows_the_file(tmp_path):
    r = cli("profiles", "--profile-file", str(write(tmp_path, UPGRADE)), "--json")
    assert r.returncode == 0, r.stderr
    shown = json.loads(r.stdout)["profiles"]
    assert [p["name"] for p in shown] == ["my-upgrade"] and shown[0]["upgrade_on_attach"] is True


def test_compare_and_sweep_add_the_file_profile(tmp_path):
    f = str(write(tmp_path, UPGRADE))
    r = cli("compare", "scenarios/explore/hot-unplug.toml", "--profile-file", f, "--json", "-q")
    assert r.returncode == 0, r.stderr
    assert "my-upgrade" in r.stdout
    r = cli("sweep", "--system", "sc[1] nosc[1]", "--profile-file", f, "--json", "-q", "--workers", "2")
    assert r.returncode == 0, r.stderr
    assert "my-upgrade" in json.dumps(json.loads(r.stdout))


def test_conform_job_carries_a_file_profile_to_the_guest(tmp_path, monkeypatch):
    from pyiommufd.conform import harness
    from pyiommufd.conform.corpus import Item
    monkeypatch.setattr(profiles, "PROFILES", dict(PROFILES))
    p = profiles.register_profile(load_profile_file(write(tmp_path, UPGRADE)))
    job = harness.make_job(harness.CONFIGS["mock"], [Item("a", "", "a")], profile=p.name)
    assert job["profile"] == "my-upgrade" and profile_from_json(job["profile_def"]) == p
    assert "profile_def" not in harness.make_job(harness.CONFIGS["mock"], [], profile="linux-6.6")


def test_shipped_example_loads_and_lists_its_overrides():
    from conftest import ROOT
    r = cli("profiles", "--profile-file", str(ROOT / "docs" / "profile-example.toml"), "--json")
    assert r.returncode == 0, r.stderr
    (p,) = json.loads(r.stdout)["profiles"]
    assert p["base"] == "linux-6.12"
    assert p["overrides"] == {"upgrade_on_attach": True, "upgrade_on_replace": True}
