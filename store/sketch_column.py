"""The ``sketches`` column of a metric bucket: latency and span-type sketches in one blob.

Compact and columnar, all little-endian: a header (u4 format version, u4 number of bins N, u4
number of series S), the S series ids (u4), the S bin counts per series (u4), then N bin counts
(u4) and N bin keys (u2, as key - KEY_BASE), sorted by (series, key): 6 bytes a bin. Series 0 is
the trace latency; a span type's id is a 32-bit hash of its name (``series_id``), so rows merge
with plain array operations whatever span types they hold. Reports read it with numpy and never
touch a bin in Python. Encoding then decoding gives back exactly the bins that went in.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import struct
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from store.sketch import DEFAULT_MAPPING

LATENCY_SERIES = ""
_HEADER = struct.Struct("<III")
_FORMAT = 2
KEY_BASE = DEFAULT_MAPPING.zero_key  # the smallest key the default mapping produces
_KEY_SPAN = DEFAULT_MAPPING.max_key - KEY_BASE
KEY_SLOTS = _KEY_SPAN + 1  # distinct key offsets: a dense array per series in reports
assert _KEY_SPAN < 1 << 16, "bin keys must fit in 16 bits above KEY_BASE"


@functools.lru_cache(maxsize=4096)
def series_id(name: str) -> int:
    if name == LATENCY_SERIES:
        return 0
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=4).digest(), "little") | 1


def encode_sketches(series: Mapping[str, Mapping[int, int]]) -> bytes:
    ids, lengths, keys, counts = [], [], [], []
    for sid, name in sorted((series_id(n), n) for n in series):
        bins = series[name]
        if not bins:
            continue
        k = np.fromiter(bins.keys(), dtype=np.int64, count=len(bins))
        order = np.argsort(k, kind="stable")
        keys.append(k[order])
        counts.append(np.fromiter(bins.values(), dtype=np.int64, count=len(bins))[order])
        ids.append(sid)
        lengths.append(len(bins))
    if not ids:
        return _HEADER.pack(_FORMAT, 0, 0)
    c, k = np.concatenate(counts), np.concatenate(keys) - KEY_BASE
    if c.min() < 0 or c.max() > 0xFFFFFFFF:
        raise ValueError("sketch bin counts must be within [0, 2**32)")
    if k.min() < 0 or k.max() > _KEY_SPAN:
        raise ValueError("sketch bin keys outside the default mapping")
    return b"".join((_HEADER.pack(_FORMAT, len(c), len(ids)),
                     np.asarray(ids, dtype="<u4").tobytes(),
                     np.asarray(lengths, dtype="<u4").tobytes(),
                     c.astype("<u4").tobytes(), k.astype("<u2").tobytes()))


Packed = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def unpack_sketches(blob: bytes) -> Packed:
    """(series ids, bins per series, counts, keys - KEY_BASE): read-only views into ``blob``."""
    version, n, s = _HEADER.unpack_from(blob, 0)
    if version != _FORMAT:
        raise ValueError(f"unknown sketches format {version}")
    off = _HEADER.size
    return (np.frombuffer(blob, dtype="<u4", count=s, offset=off),
            np.frombuffer(blob, dtype="<u4", count=s, offset=off + 4 * s),
            np.frombuffer(blob, dtype="<u4", count=n, offset=off + 8 * s),
            np.frombuffer(blob, dtype="<u2", count=n, offset=off + 8 * s + 4 * n))


def expand_packed(parts: Sequence[Packed]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(series id per bin, key per bin, count per bin) of many unpacked blobs, concatenated."""
    if not parts:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    ids = np.repeat(np.concatenate([p[0] for p in parts]),
                    np.concatenate([p[1] for p in parts]).astype(np.int64))
    counts = np.concatenate([p[2] for p in parts]).astype(np.int64)
    keys = np.concatenate([p[3] for p in parts]).astype(np.int64) + KEY_BASE
    return ids, keys, counts


def decode_sketches(blob: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(series id, key, count) per bin of one blob."""
    if not blob:
        return expand_packed([])
    return expand_packed([unpack_sketches(blob)])


def split_series(ids: np.ndarray, keys: np.ndarray, counts: np.ndarray,
                 names: Iterable[str]) -> dict[str, dict[int, int]]:
    """Bins per series name (``names``: the span types that may appear; latency always may).
    ``ids`` must be grouped by series, as ``encode_sketches`` writes them."""
    if not len(ids):
        return {}
    by_id = {series_id(n): n for n in (LATENCY_SERIES, *names)}
    starts = [0, *(np.flatnonzero(np.diff(ids)) + 1).tolist(), len(ids)]
    out: dict[str, dict[int, int]] = {}
    for a, b in itertools.pairwise(starts):
        out[by_id[int(ids[a])]] = dict(zip(keys[a:b].tolist(), counts[a:b].tolist(),
                                           strict=True))
    return out
