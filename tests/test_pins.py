"""Results pinned before the explorer's speed work (issue 14): the same states, orders, domain counts,
verdicts, hazards and least traces on every explore scenario and every small sweep system, symmetry on
and off.  tests/pins/generate.py wrote them with the explorer as it was; regenerate only on purpose."""
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "pins"))
import generate  # noqa: E402

PINS = json.loads(generate.OUT.read_text())
CASES = {cid: (src, p, s, sym) for cid, src, p, s, sym in generate.cases()}


def test_every_pin_is_a_case():
    assert set(PINS) == set(CASES)


@pytest.mark.parametrize("cid", sorted(CASES))
def test_pinned(cid):
    src, p, s, sym = CASES[cid]
    got = json.loads(json.dumps(generate.result(generate.scenario_of(src), p, s, sym)))
    assert got == PINS[cid]
