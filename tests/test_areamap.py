"""kernel.areamap.AreaMap (io_pagetable's areas) against a plain dict + sorted list."""
import bisect
import pickle

from hypothesis import given, settings, strategies as st

from pyiommufd.kernel.areamap import AreaMap


def _check(m: AreaMap, ref: dict, probes) -> None:
    keys = sorted(ref)
    assert list(m) == keys == m.keys() and len(m) == len(ref)
    assert m.items() == [(k, ref[k]) for k in keys] and m.values() == [ref[k] for k in keys]
    assert all(m._chunks) and m._maxes == [c[-1] for c in m._chunks]
    for q in probes:
        i = bisect.bisect_right(keys, q)
        assert m.floor(q) == (keys[i - 1] if i else None)
        assert m.higher(q) == (keys[i] if i < len(keys) else None)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["set", "del", "pop"]), st.integers(0, 300)), max_size=300),
       st.lists(st.integers(-5, 305), min_size=1, max_size=10))
def test_areamap_is_an_ordered_dict_with_neighbours(ops, probes):
    AreaMap.LOAD, saved = 4, AreaMap.LOAD       # small chunks: splits and emptied chunks happen
    try:
        m, ref = AreaMap(), {}
        for i, (op, k) in enumerate(ops):
            if op == "set":
                m[k] = ref[k] = i
            elif op == "del" and k in ref:
                del m[k], ref[k]
            elif op == "pop":
                assert m.pop(k, None) == ref.pop(k, None)
        _check(m, ref, probes)
        c = pickle.loads(pickle.dumps(m))
        _check(c, ref, probes)
        d = m.copy()
        d[1000] = "x"
        assert 1000 not in m and c == m
    finally:
        AreaMap.LOAD = saved
