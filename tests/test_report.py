"""Statistics of the comparison report: spreads over replicas and model comparisons."""

from __future__ import annotations

import math

import pytest

from neqgen.commands.report import aggregate, compare, format_table


def test_aggregate_gives_t_interval():
    statistics = aggregate([1.0, 2.0, 3.0])

    assert statistics["mean"] == pytest.approx(2.0)
    assert statistics["std"] == pytest.approx(1.0)
    # Student t with 2 degrees of freedom: t(0.975) = 4.303.
    assert statistics["ci95"] == pytest.approx(4.3027 / math.sqrt(3), rel=1e-4)
    assert statistics["n"] == 3


def test_aggregate_single_replica_has_no_spread():
    statistics = aggregate([0.5])

    assert statistics["mean"] == 0.5
    assert math.isnan(statistics["std"])


def test_compare_separates_distinct_models():
    result = compare([0.010, 0.011, 0.012], [0.020, 0.021, 0.019])

    assert result["difference"] == pytest.approx(-0.009)
    assert result["p"] < 0.01


def test_compare_overlapping_models_not_significant():
    result = compare([0.010, 0.020, 0.015], [0.012, 0.018, 0.016])

    assert result["p"] > 0.5


def test_format_table_shows_mean_and_spread():
    summary = {
        "one_well": {
            "energy": {"n_replicas": 3, "jsd_mean": 0.01, "jsd_mean_std": 0.002},
            "noise_floor": {"n_replicas": 3, "jsd_mean": 0.005, "jsd_mean_std": 0.001},
            "comparisons": {
                "energy - noise_floor": {
                    "metric": "jsd_mean",
                    "difference": 0.005,
                    "t": 3.9,
                    "p": 0.03,
                }
            },
        }
    }

    text = format_table("five_well", summary)

    assert "| one_well | energy | 0.01 ± 0.002 |" in text
    assert "significant at 5%" in text
    assert "over 3 replicas" in text
