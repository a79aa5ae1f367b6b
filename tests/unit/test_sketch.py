"""The log-bucket sketch: accuracy against exact quantiles, merge/subtract algebra, JSON, errors.

Exact quantiles use the sketch's documented rank convention (the sorted sample at 0-based rank
floor(q·(n-1)), numpy's ``method="lower"``), computed here with the same float formula so that a
last-ulp difference in numpy's virtual index cannot pick the neighbouring sample.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from random import Random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from store.sketch import DEFAULT_MAPPING, LogMapping, Sketch, key_for, sketch_of, value_for

ALPHA = DEFAULT_MAPPING.relative_accuracy
# The bound is exactly α; the slack only absorbs float rounding in log/exp at bin edges.
TOLERANCE = ALPHA * (1 + 1e-9)
QUANTILES = (0.0, 0.001, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999, 1.0)
N = 20_000


def _lognormal_latencies_ms(rng: np.random.Generator) -> list[float]:
    # Median ~400 ms with a long tail, clipped to the 10 ms - 60 s range of real trace latencies.
    return list(np.clip(rng.lognormal(mean=6.0, sigma=1.5, size=N), 10.0, 60_000.0))


def _uniform(rng: np.random.Generator) -> list[float]:
    return list(rng.uniform(0.0, 5_000.0, size=N))


def _bimodal(rng: np.random.Generator) -> list[float]:
    fast = rng.normal(20.0, 3.0, size=N * 3 // 4)
    slow = rng.normal(2_500.0, 400.0, size=N // 4)
    return list(np.abs(np.concatenate([fast, slow])))


def _many_duplicates(rng: np.random.Generator) -> list[float]:
    return list(rng.choice([1.0, 12.5, 12.5, 80.0, 1_000.0, 30_000.0], size=N))


def _single_value(rng: np.random.Generator) -> list[float]:
    return [123.456]


def _with_zeros(rng: np.random.Generator) -> list[float]:
    zeros = np.zeros(N // 3)
    return list(np.concatenate([zeros, rng.lognormal(mean=2.0, sigma=2.0, size=N)]))


def _pareto_tail(rng: np.random.Generator) -> list[float]:
    return list((rng.pareto(1.2, size=N) + 1.0) * 5.0)


DISTRIBUTIONS: dict[str, Callable[[np.random.Generator], list[float]]] = {
    "lognormal_latency": _lognormal_latencies_ms,
    "uniform": _uniform,
    "bimodal": _bimodal,
    "many_duplicates": _many_duplicates,
    "single_value": _single_value,
    "with_zeros": _with_zeros,
    "pareto_tail": _pareto_tail,
}


def exact_quantile(ordered: list[float], q: float) -> float:
    return ordered[math.floor(q * (len(ordered) - 1))]


def relative_error(estimate: float, exact: float) -> float:
    if exact == 0.0:
        return 0.0 if estimate == 0.0 else math.inf
    return abs(estimate - exact) / exact


def worst_relative_error(values: list[float], sketch: Sketch) -> float:
    ordered = sorted(values)
    errors = []
    for q in QUANTILES:
        estimate = sketch.quantile(q)
        assert estimate is not None
        errors.append(relative_error(estimate, exact_quantile(ordered, q)))
    return max(errors)


@pytest.mark.parametrize("name", sorted(DISTRIBUTIONS))
def test_quantiles_are_within_relative_accuracy(name: str) -> None:
    values = DISTRIBUTIONS[name](np.random.default_rng(20240611))
    sketch = sketch_of(values)

    assert sketch.count == len(values)
    assert worst_relative_error(values, sketch) <= TOLERANCE


def test_rank_convention_is_numpy_lower() -> None:
    values = _lognormal_latencies_ms(np.random.default_rng(7))[:1001]
    ordered = sorted(values)
    for q in (0.5, 0.95, 0.99):
        assert exact_quantile(ordered, q) == np.quantile(values, q, method="lower")


def test_values_below_min_value_are_reported_as_zero() -> None:
    sketch = sketch_of([0.0, -0.0, 1e-9, 0.0009, 5.0])

    assert sketch.bins == {DEFAULT_MAPPING.zero_key: 4, key_for(5.0): 1}
    assert sketch.quantile(0.5) == 0.0
    assert sketch.quantile(0.75) == 0.0
    assert relative_error(sketch.quantile(1.0) or 0.0, 5.0) <= TOLERANCE


@given(st.floats(min_value=1e-3, max_value=1e300))
@settings(deadline=None, max_examples=300)
def test_bin_representative_is_within_alpha(value: float) -> None:
    assert relative_error(value_for(key_for(value)), value) <= TOLERANCE


@given(st.floats(min_value=1e-3, max_value=1e12), st.floats(min_value=0.05, max_value=0.3))
@settings(deadline=None, max_examples=100)
def test_other_accuracies_keep_their_bound(value: float, alpha: float) -> None:
    mapping = LogMapping(relative_accuracy=alpha)

    assert relative_error(mapping.value_for(mapping.key_for(value)), value) <= alpha * (1 + 1e-9)


def test_keys_are_monotone_and_the_zero_key_sorts_first() -> None:
    values = [0.0, 1e-4, 1e-3, 0.5, 1.0, 1.01, 10.0, 60_000.0, 1e15]
    keys = [key_for(v) for v in values]

    assert keys == sorted(keys)
    assert keys[0] == keys[1] == DEFAULT_MAPPING.zero_key < keys[2] == DEFAULT_MAPPING.min_key
    assert key_for(1.0) == 0 and value_for(0) == pytest.approx(1 - ALPHA)


def test_merge_equals_sketch_of_the_union_bin_for_bin() -> None:
    rng = np.random.default_rng(3)
    values = _lognormal_latencies_ms(rng) + _with_zeros(rng)
    parts = np.array_split(np.array(values), 7)
    merged = Sketch()
    for part in parts:
        merged.merge(sketch_of(part.tolist()))

    whole = sketch_of(values)
    assert dict(merged.bins) == dict(whole.bins)
    assert merged == whole and merged.count == len(values)
    assert merged.quantile(0.99) == whole.quantile(0.99)


def test_merge_with_itself_doubles_and_subtract_itself_empties() -> None:
    sketch = sketch_of([1.0, 2.0, 2.0, 0.0])
    sketch.merge(sketch)

    assert sketch == sketch_of([1.0, 1.0, 2.0, 2.0, 2.0, 2.0, 0.0, 0.0])
    sketch.subtract(sketch)
    assert sketch == Sketch() and sketch.count == 0 and not sketch.bins


def test_subtract_undoes_add() -> None:
    rng = np.random.default_rng(11)
    old, new = _bimodal(rng)[:500], _lognormal_latencies_ms(rng)[:500]
    sketch = sketch_of(old)
    previous_version = sketch_of(new[:100])
    sketch.merge(previous_version)

    sketch.subtract(previous_version)
    assert sketch == sketch_of(old)
    sketch.subtract(sketch_of(old))
    assert sketch == Sketch() and sketch.quantile(0.5) is None


def test_subtracting_what_was_never_added_raises_and_changes_nothing() -> None:
    sketch = sketch_of([1.0, 5.0, 5.0])
    before = sketch.copy()

    with pytest.raises(ValueError, match=r"cannot subtract: bin key=\d+ holds 0"):
        sketch.subtract(sketch_of([1.0, 700.0]))
    with pytest.raises(ValueError, match="holds 2 but the other sketch holds 3"):
        sketch.subtract(sketch_of([5.0, 5.0, 5.0]))
    assert sketch == before and sketch.count == 3


def test_sketches_with_different_mappings_do_not_mix() -> None:
    coarse = Sketch(LogMapping(relative_accuracy=0.05))
    coarse.add(1.0)

    for operation in (Sketch.merge, Sketch.subtract):
        with pytest.raises(ValueError, match="different mappings"):
            operation(sketch_of([1.0]), coarse)
    assert coarse != sketch_of([1.0])


# A trace is a list of values; a later version of some traces replaces the earlier one.
traces = st.lists(
    st.lists(
        st.one_of(st.just(0.0), st.floats(min_value=0.0, max_value=1e9)), min_size=0, max_size=8
    ),
    min_size=1,
    max_size=12,
)


@given(traces, traces, st.data())
@settings(deadline=None, max_examples=150)
def test_add_and_subtract_in_any_order_give_identical_bins(
    first: list[list[float]], second: list[list[float]], data: st.DataObject
) -> None:
    # Trace i is ingested as first[i]; if second has an entry i, it is replaced by second[i].
    operations = [("add", i, first[i]) for i in range(len(first))]
    replaced = range(min(len(first), len(second)))
    operations += [("sub", i, first[i]) for i in replaced]
    operations += [("add", -1 - i, second[i]) for i in replaced]
    order = data.draw(st.permutations(operations))
    for i in replaced:  # a version can only be removed after it was added
        add_at, sub_at = order.index(("add", i, first[i])), order.index(("sub", i, first[i]))
        if sub_at < add_at:
            order[add_at], order[sub_at] = order[sub_at], order[add_at]

    sketch = Sketch()
    for verb, _, values in order:
        if verb == "add":
            sketch.merge(sketch_of(values))
        else:
            sketch.subtract(sketch_of(values))

    final = [second[i] if i in replaced else first[i] for i in range(len(first))]
    expected = sketch_of(v for trace in final for v in trace)
    assert sketch == expected
    assert sketch.count == sum(len(trace) for trace in final)


@given(st.lists(st.floats(min_value=0.0, max_value=1e12), max_size=50), st.randoms())
@settings(deadline=None, max_examples=100)
def test_add_order_does_not_matter(values: list[float], rnd: Random) -> None:
    shuffled = list(values)
    rnd.shuffle(shuffled)

    assert sketch_of(shuffled) == sketch_of(values)


@pytest.mark.parametrize("name", sorted(DISTRIBUTIONS))
def test_json_round_trip(name: str) -> None:
    sketch = sketch_of(DISTRIBUTIONS[name](np.random.default_rng(5)))
    encoded = json.dumps(sketch.to_json(), separators=(",", ":"))

    restored = Sketch.from_json(json.loads(encoded))
    assert restored == sketch and restored.count == sketch.count
    assert restored.quantile(0.95) == sketch.quantile(0.95)


def test_json_form_is_sorted_keys_and_counts() -> None:
    sketch = sketch_of([10.0, 0.0, 10.0, 1.0])

    assert sketch.to_json() == {
        "k": [DEFAULT_MAPPING.zero_key, key_for(1.0), key_for(10.0)],
        "n": [1, 1, 2],
    }


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], "exactly the keys"),
        ({"k": [1]}, "exactly the keys"),
        ({"k": [1], "n": [1], "x": 0}, "exactly the keys"),
        ({"k": [1, 2], "n": [1]}, "same length"),
        ({"k": "1", "n": [1]}, "same length"),
        ({"k": [1.0], "n": [1]}, "invalid bin key"),
        ({"k": [True], "n": [1]}, "invalid bin key"),
        ({"k": [10**6], "n": [1]}, "invalid bin key"),
        ({"k": [1], "n": [0]}, "invalid count"),
        ({"k": [1], "n": [-2]}, "invalid count"),
        ({"k": [1], "n": ["3"]}, "invalid count"),
        ({"k": [1, 1], "n": [1, 1]}, "twice"),
    ],
)
def test_malformed_json_raises(data: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Sketch.from_json(data)


def test_empty_sketch() -> None:
    empty = Sketch()

    assert empty.count == 0 and not empty.bins
    assert all(empty.quantile(q) is None for q in QUANTILES)
    assert empty.to_json() == {"k": [], "n": []}
    assert Sketch.from_json({"k": [], "n": []}) == empty
    empty.merge(Sketch())
    empty.subtract(Sketch())
    assert empty == Sketch()


@pytest.mark.parametrize("value", [-1.0, -1e-12, math.nan, math.inf, -math.inf, 1e308])
def test_invalid_values_raise(value: float) -> None:
    sketch = Sketch()
    with pytest.raises(ValueError, match="sketch values must be finite"):
        sketch.add(value)
    assert sketch == Sketch()


@pytest.mark.parametrize("n", [0, -1])
def test_invalid_multiplicity_raises(n: int) -> None:
    with pytest.raises(ValueError, match="n must be >= 1"):
        Sketch().add(1.0, n)


def test_add_with_multiplicity_equals_repeated_add() -> None:
    sketch = Sketch()
    sketch.add(42.0, 5)

    assert sketch == sketch_of([42.0] * 5) and sketch.count == 5


@pytest.mark.parametrize("q", [-0.01, 1.01, math.nan, math.inf])
def test_quantile_outside_unit_interval_raises(q: float) -> None:
    for sketch in (Sketch(), sketch_of([1.0])):
        with pytest.raises(ValueError, match=r"quantile q must be within \[0, 1\]"):
            sketch.quantile(q)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"relative_accuracy": 0.0},
        {"relative_accuracy": 1.0},
        {"relative_accuracy": math.nan},
        {"min_value_ms": 0.0},
        {"min_value_ms": math.nan},
    ],
)
def test_invalid_mapping_raises(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must be within"):
        LogMapping(**kwargs)


def test_value_for_rejects_keys_the_mapping_cannot_produce() -> None:
    assert value_for(DEFAULT_MAPPING.zero_key) == 0.0
    for key in (DEFAULT_MAPPING.zero_key - 1, DEFAULT_MAPPING.max_key + 1):
        with pytest.raises(ValueError, match="outside"):
            value_for(key)


@given(st.lists(st.floats(min_value=0, max_value=1e7, allow_nan=False), min_size=0, max_size=300),
       st.lists(st.floats(min_value=0, max_value=1), min_size=1, max_size=6))
def test_quantiles_in_one_pass_equal_quantile_one_by_one(values: list[float],
                                                         qs: list[float]) -> None:
    sketch = sketch_of(values)
    assert sketch.quantiles(qs) == [sketch.quantile(q) for q in qs]
    assert Sketch.from_counts(dict(sketch.bins)) == sketch
