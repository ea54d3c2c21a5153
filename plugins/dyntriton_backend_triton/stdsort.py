"""The order libstdc++'s ``std::sort`` leaves classes in, so top-K ties come out as Triton's do.

Triton ranks the classes of an output with ``std::sort`` over the indices ``0..n-1``, comparing
``values[i] > values[j]`` (``src/classification.cc``). ``std::sort`` is not stable, so which of
several equal values comes first is decided by libstdc++'s introsort (GCC builds every Triton
release), step by step:

- ``__introsort_loop``: while a range has more than 16 elements, move the median of
  ``range[1]``, ``range[mid]``, ``range[-1]`` to ``range[0]``, Hoare-partition the rest around it,
  recurse into the right part and loop on the left; after ``2 * floor(log2(n))`` levels a range is
  heap-sorted instead (``__partial_sort``).
- ``__final_insertion_sort``: one insertion sort over the whole array, which is stable and, the
  ranges being ordered between themselves, only reorders within each range.

Up to 16 classes this is a stable sort: equal values keep ascending index order. Beyond 16,
:func:`sort_order` reproduces the partitions with numpy (one vectorised pass per partition, and
only for the ranges that reach the first ``head`` places); :func:`reference_sort_order` replays
every comparison in Python, for NaN (where ``>`` is no ordering and only the exact steps tell)
and as the oracle the tests compare against.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["THRESHOLD", "reference_sort_order", "sort_order", "stable_descending"]

#: libstdc++'s ``_S_threshold``: ranges this small are left to the final insertion sort.
THRESHOLD = 16


def stable_descending(values: np.ndarray) -> np.ndarray:
    """Indices sorting the last axis of ``values`` by descending value, equal values in ascending index order.

    (No negation: it would overflow the smallest signed integer and wrap unsigned ones.)
    """
    n = values.shape[-1]
    ascending_of_reversed = np.argsort(values[..., ::-1], axis=-1, kind="stable")
    return (n - 1 - ascending_of_reversed)[..., ::-1]


def _depth_limit(n: int) -> int:
    return 2 * (n.bit_length() - 1)  # 2 * std::__lg(n)


def sort_order(values: np.ndarray, head: int) -> np.ndarray:
    """The first ``head`` indices of 1-D ``values`` in the order Triton's ``std::sort`` puts them.

    :param values: one row of class scores; must hold no NaN (use :func:`reference_sort_order`).
    :param head: how many leading places are wanted; ranges entirely past it are left unsorted.
    :returns: int64 indices into ``values``, ``min(head, len(values))`` of them.
    """
    n = len(values)
    work = values.copy()
    order = np.arange(n)
    pending = [(0, n, _depth_limit(n))] if n > 1 else []
    while pending:
        first, last, depth = pending.pop()
        if last - first <= THRESHOLD or first >= head:
            continue
        if depth == 0:
            segment = order[first:last].tolist()
            _heap_sort(segment, 0, len(segment), values.tolist())
            order[first:last] = segment
            work[first:last] = values[order[first:last]]
            continue
        cut = _partition(work, order, first, last)
        pending += [(first, cut, depth - 1), (cut, last, depth - 1)]
    return order[stable_descending(work)[:head]]


def _partition(work: np.ndarray, order: np.ndarray, first: int, last: int) -> int:
    """``__unguarded_partition_pivot`` on ``work[first:last]`` (``order`` follows); returns the cut.

    Hoare's scans stop, left to right, at the values not above the pivot and, right to left, at
    those not below it; the i-th stops swap while they have not crossed. So the swaps and the cut
    follow from the two lists of stops, without walking the range in Python.
    """
    mid = first + (last - first) // 2
    _move_median_to_first(work, order, first, first + 1, mid, last - 1)
    pivot = work[first]
    span = work[first + 1 : last]
    left = np.flatnonzero(~(span > pivot))
    right = np.flatnonzero(~(pivot > span))[::-1]
    pairs = min(len(left), len(right))
    crossed = left[:pairs] >= right[:pairs]
    swaps = int(np.argmax(crossed)) if crossed.any() else pairs
    if swaps:
        a, b = left[:swaps] + first + 1, right[:swaps] + first + 1
        work[a], work[b] = work[b], work[a].copy()
        order[a], order[b] = order[b], order[a].copy()
    if swaps == 0:
        stop = int(left[0])
    else:
        # After a swap the left scan stops at the swapped-in value at the latest.
        stop = int(right[swaps - 1]) if swaps >= len(left) else min(int(left[swaps]), int(right[swaps - 1]))
    return first + 1 + stop


def _move_median_to_first(work: np.ndarray, order: np.ndarray, result: int, a: int, b: int, c: int) -> None:
    def above(i: int, j: int) -> bool:
        return bool(work[i] > work[j])

    if above(a, b):
        pick = b if above(b, c) else c if above(a, c) else a
    elif above(a, c):
        pick = a
    elif above(b, c):
        pick = c
    else:
        pick = b
    work[[result, pick]] = work[[pick, result]]
    order[[result, pick]] = order[[pick, result]]


# -- the reference: every step of libstdc++'s std::sort, in Python ------------------------------------


def reference_sort_order(values: Sequence[Any]) -> list[int]:
    """Indices ``0..n-1`` of ``values`` after libstdc++'s ``std::sort`` with ``values[i] > values[j]``.

    Slow (pure Python) but exact for any values, NaN included. Where the C++ would read past the
    array (possible only when NaN breaks the ordering: undefined behaviour in Triton) the scans stop
    at the array's ends.
    """
    v = list(values)
    a = list(range(len(v)))
    if len(a) > 1:
        _introsort_loop(a, 0, len(a), _depth_limit(len(a)), v)
        _final_insertion_sort(a, v)
    return a


def _introsort_loop(a: list[int], first: int, last: int, depth: int, v: list[Any]) -> None:
    while last - first > THRESHOLD:
        if depth == 0:
            _heap_sort(a, first, last, v)
            return
        depth -= 1
        mid = first + (last - first) // 2
        _median_to_first(a, first, first + 1, mid, last - 1, v)
        cut = _unguarded_partition(a, first + 1, last, first, v)
        _introsort_loop(a, cut, last, depth, v)
        last = cut


def _median_to_first(a: list[int], result: int, x: int, y: int, z: int, v: list[Any]) -> None:
    def above(i: int, j: int) -> bool:
        return v[a[i]] > v[a[j]]

    if above(x, y):
        pick = y if above(y, z) else z if above(x, z) else x
    elif above(x, z):
        pick = x
    elif above(y, z):
        pick = z
    else:
        pick = y
    a[result], a[pick] = a[pick], a[result]


def _unguarded_partition(a: list[int], first: int, last: int, pivot: int, v: list[Any]) -> int:
    p = v[a[pivot]]
    end = len(a) - 1
    while True:
        while first < end and v[a[first]] > p:
            first += 1
        last -= 1
        while last > 0 and p > v[a[last]]:
            last -= 1
        if not first < last:
            return first
        a[first], a[last] = a[last], a[first]
        first += 1


def _final_insertion_sort(a: list[int], v: list[Any]) -> None:
    for i in range(1, len(a)):
        item = a[i]
        if i < THRESHOLD and v[item] > v[a[0]]:
            a[1 : i + 1] = a[0:i]
            a[0] = item
            continue
        j = i
        while j > 0 and v[item] > v[a[j - 1]]:
            a[j] = a[j - 1]
            j -= 1
        a[j] = item


def _heap_sort(a: list[int], first: int, last: int, v: list[Any]) -> None:
    """``__partial_sort(first, last, last)``: ``__make_heap`` then ``__sort_heap``, as libstdc++ does them."""
    length = last - first
    if length >= 2:
        parent = (length - 2) // 2
        while True:
            _adjust_heap(a, first, parent, length, a[first + parent], v)
            if parent == 0:
                break
            parent -= 1
    while last - first > 1:
        last -= 1
        item = a[last]
        a[last] = a[first]
        _adjust_heap(a, first, 0, last - first, item, v)


def _adjust_heap(a: list[int], first: int, hole: int, length: int, item: int, v: list[Any]) -> None:
    top = hole
    child = hole
    while child < (length - 1) // 2:
        child = 2 * (child + 1)
        if v[a[first + child]] > v[a[first + child - 1]]:
            child -= 1
        a[first + hole] = a[first + child]
        hole = child
    if length % 2 == 0 and child == (length - 2) // 2:
        child = 2 * (child + 1)
        a[first + hole] = a[first + child - 1]
        hole = child - 1
    parent = (hole - 1) // 2
    while hole > top and v[a[first + parent]] > v[item]:
        a[first + hole] = a[first + parent]
        hole = parent
        parent = (hole - 1) // 2
    a[first + hole] = item
