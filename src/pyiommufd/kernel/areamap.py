"""An ordered map from an area's first IOVA to its value, for io_pagetable's areas.

The kernel keeps areas in an interval tree.  Areas never overlap, so ordering them by
first IOVA is enough: the area that could contain an IOVA is the one with the greatest
start at or below it (``floor``), the next one up is ``higher``.

Layout: a dict for the values, and the starts in sorted chunks of at most ``2 * LOAD``
(plain lists) with each chunk's maximum beside them -- a one-level B-tree.  A lookup is two
C bisects (the maxima, then one chunk); an insert or delete adds an O(LOAD) list move.  So
map, unmap and their overlap checks cost O(log n) comparisons, and touch about as little
memory with 10^6 areas as with 10^3 (sortedcontainers' SortedDict has the same layout plus
a positional index; neighbour queries through it walk that index on every call).  Plain
lists also copy and pickle at C speed, which the explorer's state cloning needs.
"""
from __future__ import annotations

from bisect import bisect_left, bisect_right, insort


class AreaMap:
    __slots__ = ("_values", "_chunks", "_maxes")
    _fixed = __slots__   # never rebound, changed in place (snapshot.fixed_slots)

    LOAD = 512

    def __init__(self, items=()):
        self._values: dict = {}
        self._chunks: list[list[int]] = []
        self._maxes: list[int] = []
        for k, v in items:
            self[k] = v

    # -- mapping ----------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._values)

    def __contains__(self, start: int) -> bool:
        return start in self._values

    def __getitem__(self, start: int):
        return self._values[start]

    def __iter__(self):
        for chunk in self._chunks:
            yield from chunk

    def keys(self) -> list[int]:
        return [k for chunk in self._chunks for k in chunk]

    def items(self) -> list[tuple]:
        """(start, value) in IOVA order."""
        values = self._values
        return [(k, values[k]) for chunk in self._chunks for k in chunk]

    def values(self) -> list:
        values = self._values
        return [values[k] for chunk in self._chunks for k in chunk]

    def key_items(self) -> tuple:
        """``items()`` as a tuple, cheaply when there are at most one area (the explorer's key reads it
        per state)."""
        values = self._values
        return tuple(values.items()) if len(values) < 2 else tuple(self.items())

    def __eq__(self, other) -> bool:
        return isinstance(other, AreaMap) and self._values == other._values

    __hash__ = None

    def __repr__(self) -> str:
        return f"AreaMap({self.items()!r})"

    def copy(self) -> "AreaMap":
        new = AreaMap.__new__(AreaMap)
        new._values = dict(self._values)
        new._chunks = [list(c) for c in self._chunks]
        new._maxes = list(self._maxes)
        return new

    # -- neighbours ---------------------------------------------------------------
    def floor(self, iova: int) -> int | None:
        """The greatest start <= iova, or None."""
        maxes = self._maxes
        c = bisect_left(maxes, iova)          # the first chunk reaching iova
        if c < len(maxes):
            chunk = self._chunks[c]
            j = bisect_right(chunk, iova)
            if j:
                return chunk[j - 1]
        return maxes[c - 1] if c else None

    def higher(self, iova: int) -> int | None:
        """The least start > iova, or None."""
        maxes = self._maxes
        c = bisect_right(maxes, iova)         # the first chunk going past iova
        if c == len(maxes):
            return None
        chunk = self._chunks[c]
        return chunk[bisect_right(chunk, iova)]

    # -- insert / delete ------------------------------------------------------------
    def __setitem__(self, start: int, value) -> None:
        if start not in self._values:
            maxes, chunks = self._maxes, self._chunks
            if not maxes:
                chunks.append([start])
                maxes.append(start)
            else:
                c = bisect_left(maxes, start)
                if c == len(maxes):           # past every chunk: append to the last
                    c -= 1
                    chunks[c].append(start)
                    maxes[c] = start
                else:
                    insort(chunks[c], start)
                chunk = chunks[c]
                if len(chunk) > 2 * self.LOAD:
                    half = chunk[self.LOAD:]
                    del chunk[self.LOAD:]
                    chunks.insert(c + 1, half)
                    maxes[c] = chunk[-1]
                    maxes.insert(c + 1, half[-1])
        self._values[start] = value

    def __delitem__(self, start: int) -> None:
        del self._values[start]
        maxes, chunks = self._maxes, self._chunks
        c = bisect_left(maxes, start)
        chunk = chunks[c]
        j = bisect_left(chunk, start)
        del chunk[j]
        if not chunk:
            del chunks[c]
            del maxes[c]
        elif j == len(chunk):
            maxes[c] = chunk[-1]

    def pop(self, start: int, *default):
        if start not in self._values:
            if default:
                return default[0]
            raise KeyError(start)
        value = self._values[start]
        del self[start]
        return value
