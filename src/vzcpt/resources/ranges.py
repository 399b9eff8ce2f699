"""Address ranges as (start, end) pairs: the set operations pre-copy needs."""

from __future__ import annotations

Range = tuple[int, int]


def intersect(a: list[Range], b: list[Range]) -> list[Range]:
    """The parts common to two lists of ranges (each list: disjoint ranges)."""
    out: list[Range] = []
    a, b = sorted(a), sorted(b)
    i = j = 0
    while i < len(a) and j < len(b):
        start, end = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if start < end:
            out.append((start, end))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return merged(out)


def subtract(a: list[Range], b: list[Range]) -> list[Range]:
    """The parts of `a` outside every range of `b`."""
    out: list[Range] = []
    cuts = sorted(b)
    for start, end in sorted(a):
        for cut_start, cut_end in cuts:
            if cut_end <= start or cut_start >= end:
                continue
            if cut_start > start:
                out.append((start, cut_start))
            start = max(start, cut_end)
            if start >= end:
                break
        if start < end:
            out.append((start, end))
    return merged(out)


def merged(ranges: list[Range]) -> list[Range]:
    out: list[Range] = []
    for start, end in sorted(ranges):
        if out and out[-1][1] == start:
            out[-1] = (out[-1][0], end)
        else:
            out.append((start, end))
    return out
