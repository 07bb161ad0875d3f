"""snapshot.py: states recorded one level deep and restored into the same objects."""
import pytest

from pyiommufd.snapshot import Snapshot


class Slotted:
    __slots__ = ("a", "b", "late")

    def __init__(self, a, b):
        self.a, self.b = a, b


class Plain:
    def __init__(self, **kw):
        self.__dict__.update(kw)


def test_restore_puts_values_back_into_the_same_objects_keeping_aliases():
    shared_list = [1, 2]
    inner = Slotted(1, shared_list)
    root = Plain(inner=inner, also=shared_list, table={"k": inner}, members={3, 4}, raw=bytearray(b"ab"))
    snap = Snapshot(root, set())
    inner.a = 99
    shared_list.append(3)
    root.table["new"] = Slotted(0, 0)
    root.members.discard(3)
    root.raw[0] = 0
    root.extra = "added"
    assert snap.restore() is root
    assert root.inner is inner and inner.a == 1 and inner.b is shared_list is root.also
    assert shared_list == [1, 2] and root.table == {"k": inner} and root.members == {3, 4}
    assert root.raw == bytearray(b"ab") and not hasattr(root, "extra")


def test_unset_slots_stay_unset_and_shared_objects_are_not_recorded():
    frozen_part = Plain(x=1)
    root = Plain(s=Slotted(1, 2), fixed=frozen_part)
    snap = Snapshot(root, {id(frozen_part)})
    root.s.late = "set later"
    frozen_part.x = 2
    snap.restore()
    assert not hasattr(root.s, "late")
    assert frozen_part.x == 2          # shared: passed by reference, never restored


def test_a_derived_snapshot_records_new_objects_and_changes_only():
    root = Plain(items=[], n=0)
    parent = Snapshot(root, set())
    made = Slotted("fresh", [])
    root.items.append(made)
    root.n = 1
    child = Snapshot(root, set(), parent)
    made.a = "changed after"
    made.b.append("x")
    parent.restore()
    assert root.items == [] and root.n == 0
    child.restore()
    assert root.items == [made] and root.n == 1 and made.a == "fresh" and made.b == []


def test_an_object_without_slots_or_dict_is_refused():
    class Odd(int):
        __slots__ = ()
    with pytest.raises(TypeError, match="cannot record"):
        Snapshot(Plain(x=Odd(3)), set())


def test_an_object_without_any_state_is_walked_through_not_recorded():
    class Stateless:
        __slots__ = ()
    root = Plain(s=Stateless(), n=1)
    snap = Snapshot(root, set())
    assert root.s not in snap.objs and snap.dicts == [root.__dict__]
    root.n = 2
    snap.restore()
    assert root.n == 1
