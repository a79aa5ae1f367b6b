"""A DDSketch-style log-bucket histogram for non-negative values (latencies and durations in ms).

A value v >= ``min_value_ms`` goes to bin k = ceil(log_γ v), γ = (1+α)/(1-α); the bin's
representative 2·γ^k/(γ+1) is within relative error α of every value in the bin, so any quantile
is within α of the exact sample at the same rank. Values below ``min_value_ms`` (and 0) share one
zero bin, reported as 0. Counts are exact integers in a sparse ``dict[int, int]``, so sketches are
mergeable (merge = add counts bin by bin, associative and commutative) and subtractable (removing a
trace's earlier contribution leaves exactly the bins of the remaining values; no bin goes below 0).
The mapping (α, ``min_value_ms``) is part of the stored format: sketches with different mappings
never mix, and changing the default means rebuilding stored sketches.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

__all__ = ["DEFAULT_MAPPING", "LogMapping", "Sketch", "key_for", "sketch_of", "value_for"]

# A quarter of the largest float: every bin representative up to here stays finite for any α < 1.
_MAX_VALUE_MS = sys.float_info.max / 4


@dataclass(frozen=True, slots=True)
class LogMapping:
    """Maps values to bin keys and back, with relative accuracy ``relative_accuracy`` (α)."""

    relative_accuracy: float = 0.01
    min_value_ms: float = 1e-3
    gamma: float = field(init=False, repr=False, compare=False)
    min_key: int = field(init=False, repr=False, compare=False)
    max_key: int = field(init=False, repr=False, compare=False)
    zero_key: int = field(init=False, repr=False, compare=False)
    _multiplier: float = field(init=False, repr=False, compare=False)
    _ln_gamma: float = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        alpha = self.relative_accuracy
        if not 0.0 < alpha < 1.0:
            raise ValueError(f"relative_accuracy must be within (0, 1), got {alpha!r}")
        if not 0.0 < self.min_value_ms < 1.0:
            raise ValueError(f"min_value_ms must be within (0, 1), got {self.min_value_ms!r}")
        gamma = (1.0 + alpha) / (1.0 - alpha)
        ln_gamma = math.log(gamma)
        object.__setattr__(self, "gamma", gamma)
        object.__setattr__(self, "_ln_gamma", ln_gamma)
        object.__setattr__(self, "_multiplier", 1.0 / ln_gamma)
        # The key range is computed by the same formula as key_for, so (log being monotone) every
        # accepted value lands inside it, and the zero key sorts below every real key.
        min_key = math.ceil(math.log(self.min_value_ms) * self._multiplier)
        object.__setattr__(self, "min_key", min_key)
        object.__setattr__(self, "max_key", math.ceil(math.log(_MAX_VALUE_MS) * self._multiplier))
        object.__setattr__(self, "zero_key", min_key - 1)

    def key_for(self, value: float) -> int:
        """Return the bin key of ``value`` (``zero_key`` for values below ``min_value_ms``)."""
        if not value >= self.min_value_ms:  # also true for NaN
            if value >= 0.0:
                return self.zero_key
            raise ValueError(f"sketch values must be finite and >= 0, got {value!r}")
        if not value <= _MAX_VALUE_MS:
            raise ValueError(
                f"sketch values must be finite and <= {_MAX_VALUE_MS:g}, got {value!r}"
            )
        return math.ceil(math.log(value) * self._multiplier)

    def value_for(self, key: int) -> float:
        """Return bin ``key``'s representative 2·γ^k/(γ+1) = γ^k·(1-α), or 0.0 for the zero key."""
        if key == self.zero_key:
            return 0.0
        if not self.min_key <= key <= self.max_key:
            raise ValueError(
                f"bin key {key} is outside [{self.min_key}, {self.max_key}] for {self!r}"
            )
        # Added in log space so that the top bins do not overflow before the (1-α) factor.
        return math.exp(key * self._ln_gamma + math.log1p(-self.relative_accuracy))

    def is_key(self, key: int) -> bool:
        """Whether ``key`` is a bin this mapping can produce."""
        return key == self.zero_key or self.min_key <= key <= self.max_key


DEFAULT_MAPPING = LogMapping()


def key_for(value: float) -> int:
    """The bin key of ``value`` under the default mapping (α = 0.01, zero bin below 1e-3 ms)."""
    return DEFAULT_MAPPING.key_for(value)


def value_for(key: int) -> float:
    """The representative value of bin ``key`` under the default mapping."""
    return DEFAULT_MAPPING.value_for(key)


class Sketch:
    """Sparse bin counts under one ``LogMapping``; bins with a zero count are never stored.

    Quantiles follow the DDSketch rank convention: ``quantile(q)`` is the representative of the bin
    holding the sample at 0-based rank floor(q·(n-1)) of the sorted values, i.e. the estimate of
    ``numpy.quantile(values, q, method="lower")``; it is within α of that sample (values below
    ``min_value_ms`` are reported as 0, an absolute error below ``min_value_ms``).
    """

    __slots__ = ("_count", "_counts", "_mapping")

    def __init__(self, mapping: LogMapping = DEFAULT_MAPPING) -> None:
        self._mapping = mapping
        self._counts: dict[int, int] = {}
        self._count = 0

    @property
    def mapping(self) -> LogMapping:
        return self._mapping

    @property
    def count(self) -> int:
        """Number of values added (minus those subtracted)."""
        return self._count

    @property
    def bins(self) -> Mapping[int, int]:
        """A read-only view of the non-zero bin counts, by key."""
        return MappingProxyType(self._counts)

    def add(self, value: float, n: int = 1) -> None:
        """Add ``value`` ``n`` times (n >= 1)."""
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n!r}")
        key = self._mapping.key_for(value)
        counts = self._counts
        counts[key] = counts.get(key, 0) + n
        self._count += n

    def merge(self, other: Sketch) -> None:
        """Add every bin of ``other`` to this sketch (in place)."""
        self._check_mapping(other, "merge")
        counts = self._counts
        for key, n in list(other._counts.items()):
            counts[key] = counts.get(key, 0) + n
        self._count += other._count

    def subtract(self, other: Sketch) -> None:
        """Remove ``other``'s counts, bin by bin (in place); all or nothing.

        Raises ValueError, leaving this sketch unchanged, if a bin would go below zero: ``other``
        was not part of this sketch.
        """
        self._check_mapping(other, "subtract")
        counts = self._counts
        for key, n in other._counts.items():
            held = counts.get(key, 0)
            if held < n:
                raise ValueError(
                    f"cannot subtract: bin key={key} holds {held} but the other sketch holds {n}"
                )
        for key, n in list(other._counts.items()):
            left = counts[key] - n
            if left:
                counts[key] = left
            else:
                del counts[key]
        self._count -= other._count

    def quantile(self, q: float) -> float | None:
        """The value at quantile ``q`` (0 <= q <= 1, rank convention above); None when empty."""
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"quantile q must be within [0, 1], got {q!r}")
        if not self._counts:
            return None
        rank = q * (self._count - 1)
        keys = sorted(self._counts)
        seen = 0
        for key in keys[:-1]:
            seen += self._counts[key]
            if seen > rank:
                return self._mapping.value_for(key)
        return self._mapping.value_for(keys[-1])

    def quantiles(self, qs: Iterable[float]) -> list[float | None]:
        """``quantile(q)`` for each q, in one pass over the sorted bins."""
        wanted = list(qs)
        for q in wanted:
            if not 0.0 <= q <= 1.0:
                raise ValueError(f"quantile q must be within [0, 1], got {q!r}")
        if not self._counts:
            return [None] * len(wanted)
        keys = sorted(self._counts)
        order = sorted(range(len(wanted)), key=lambda i: wanted[i])
        out: list[float | None] = [None] * len(wanted)
        seen, idx = 0, 0
        counts = self._counts
        for i in order:
            rank = wanted[i] * (self._count - 1)
            while idx < len(keys) - 1 and seen + counts[keys[idx]] <= rank:
                seen += counts[keys[idx]]
                idx += 1
            out[i] = self._mapping.value_for(keys[idx])
        return out

    @classmethod
    def from_counts(cls, counts: Mapping[int, int], mapping: LogMapping = DEFAULT_MAPPING
                    ) -> Sketch:
        """A sketch over bin counts this code produced itself (keys from ``mapping``): only
        the positive counts are kept, keys are not re-validated (``from_json`` does that)."""
        sketch = cls(mapping)
        kept = {k: n for k, n in counts.items() if n > 0}
        sketch._counts = kept
        sketch._count = sum(kept.values())
        return sketch

    def copy(self) -> Sketch:
        clone = Sketch(self._mapping)
        clone._counts = dict(self._counts)
        clone._count = self._count
        return clone

    def to_json(self) -> dict[str, list[int]]:
        """A compact JSON-able form: sorted keys and their counts, ``{"k": [...], "n": [...]}``."""
        keys = sorted(self._counts)
        return {"k": keys, "n": [self._counts[key] for key in keys]}

    @classmethod
    def from_json(cls, data: object, mapping: LogMapping = DEFAULT_MAPPING) -> Sketch:
        """Rebuild a sketch from ``to_json()`` output; ValueError if it is malformed."""
        if not isinstance(data, Mapping) or set(data) != {"k", "n"}:
            raise ValueError('sketch JSON must be an object with exactly the keys "k" and "n"')
        keys, counts = data["k"], data["n"]
        if not isinstance(keys, list) or not isinstance(counts, list) or len(keys) != len(counts):
            raise ValueError('sketch JSON "k" and "n" must be lists of the same length')
        sketch = cls(mapping)
        for key, n in zip(keys, counts, strict=True):
            if not _is_int(key) or not mapping.is_key(key):
                raise ValueError(f"sketch JSON holds an invalid bin key {key!r} for {mapping!r}")
            if not _is_int(n) or n < 1:
                raise ValueError(f"sketch JSON holds an invalid count {n!r} for bin key {key}")
            if key in sketch._counts:
                raise ValueError(f"sketch JSON holds bin key {key} twice")
            sketch._counts[key] = n
            sketch._count += n
        return sketch

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sketch):
            return NotImplemented
        return self._mapping == other._mapping and self._counts == other._counts

    def __repr__(self) -> str:
        return f"Sketch(count={self._count}, bins={len(self._counts)}, mapping={self._mapping!r})"

    def _check_mapping(self, other: Sketch, verb: str) -> None:
        if other._mapping != self._mapping:
            raise ValueError(
                f"cannot {verb} sketches with different mappings: "
                f"{self._mapping!r} and {other._mapping!r}"
            )


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def sketch_of(values: Iterable[float], mapping: LogMapping = DEFAULT_MAPPING) -> Sketch:
    """A new sketch holding ``values``."""
    sketch = Sketch(mapping)
    for value in values:
        sketch.add(value)
    return sketch
