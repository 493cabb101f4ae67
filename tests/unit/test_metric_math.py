"""Metric math: the parser refuses what it does not know, the evaluator follows CloudWatch's rules."""

from __future__ import annotations

import math

import pytest

from moorage.metrics.metric_math import MetricMathError, Scope, Series, evaluate, parse, references


def scope() -> Scope:
    m1 = Series("Errors", 60, {0.0: 2.0, 60.0: 4.0, 120.0: 0.0}, "m1")
    m2 = Series("Requests", 60, {0.0: 10.0, 60.0: 8.0, 180.0: 5.0}, "m2")
    latency = Series("ModelLatency", 60, {0.0: 1500.0, 60.0: 2500.0}, "latency")
    return Scope({"m1": m1, "m2": m2, "latency": latency}, [m1, m2, latency], 0.0, 240.0)


def run(text: str) -> object:
    return evaluate(parse(text), scope())


def test_arithmetic_between_series_keeps_the_common_timestamps() -> None:
    result = run("m1/m2*100")
    assert isinstance(result, Series)
    assert result.points == {0.0: 20.0, 60.0: 50.0}


def test_precedence_unary_minus_power_and_parentheses() -> None:
    assert run("1 + 2 * 3") == 7.0
    assert run("(1 + 2) * 3") == 9.0
    assert run("-2 ^ 2") == -4.0
    assert run("2 ^ 3 ^ 2") == 512.0
    assert run("10 - 4 - 3") == 3.0
    assert run("1.5e3 / .5") == 3000.0


def test_a_number_applies_to_every_value() -> None:
    result = run("latency / 1000")
    assert isinstance(result, Series) and result.points == {0.0: 1.5, 60.0: 2.5}


def test_division_by_zero_is_no_number() -> None:
    result = run("m2 / (m1 - 2)")
    assert isinstance(result, Series)
    assert math.isnan(result.points[0.0]) and result.points[60.0] == 4.0
    assert math.isnan(run("1/0"))  # type: ignore[arg-type]


def test_aggregates_over_an_array_and_over_one_series() -> None:
    total = run("SUM([m1, m2])")
    assert isinstance(total, Series) and total.points == {0.0: 12.0, 60.0: 12.0, 120.0: 0.0, 180.0: 5.0}
    assert run("SUM(m1)") == 6.0
    assert run("AVG(m2)") == pytest.approx(23 / 3)
    assert run("MAX(m1)") == 4.0 and run("MIN(m1)") == 0.0
    every = run("SUM(METRICS())")
    assert isinstance(every, Series) and every.points[0.0] == 1512.0


def test_metrics_filters_by_id_and_arrays_map() -> None:
    selected = run('METRICS("m")')
    assert isinstance(selected, list) and [s.id for s in selected] == ["m1", "m2"]
    doubled = run("METRICS() * 2")
    assert isinstance(doubled, list) and doubled[2].points == {0.0: 3000.0, 60.0: 5000.0}


def test_fill_diff_rate_period_and_elementwise_functions() -> None:
    filled = run("FILL(m1, 0)")
    assert isinstance(filled, Series) and filled.points == {0.0: 2.0, 60.0: 4.0, 120.0: 0.0, 180.0: 0.0}
    diff = run("DIFF(m2)")
    assert isinstance(diff, Series) and diff.points == {60.0: -2.0, 180.0: -3.0}
    rate = run("RATE(m2)")
    assert isinstance(rate, Series) and rate.points == {60.0: -2.0 / 60, 180.0: -3.0 / 120}
    assert run("PERIOD(m1)") == 60.0
    absolute = run("ABS(-m1)")
    assert isinstance(absolute, Series) and absolute.points == {0.0: 2.0, 60.0: 4.0, 120.0: 0.0}
    assert run("CEIL(1.2) + FLOOR(1.8)") == 3.0


def test_references() -> None:
    assert references(parse("m1 + e2 * SUM(METRICS())")) == ({"m1", "e2"}, True)
    assert references(parse("FILL(m1, 0)")) == ({"m1"}, False)


@pytest.mark.parametrize(("text", "words"), [
    ("", "empty"),
    ("m1 +", "ends too early"),
    ("m1 m2", "after the expression"),
    ("m1 % 2", "unexpected character '%'"),
    ("(m1", "expected ')'"),
    ("SEARCH('{AWS/EC2}', 'Average', 300)", "SEARCH() is not supported"),
    ("IF(m1 > 1, m1)", "unexpected character '>'"),
    ("FILL(m1, REPEAT)", "unknown id 'REPEAT'"),
    ("METRICS() + METRICS()", "two arrays"),
    ("nothing * 2", "unknown id 'nothing'"),
    ("SUM(m1, m2)", "takes 1 argument"),
    ("__import__('os')", "is not supported"),
])
def test_what_is_refused_is_named(text: str, words: str) -> None:
    with pytest.raises(MetricMathError, match=words.replace("(", r"\(").replace(")", r"\)")):
        evaluate(parse(text), scope())
