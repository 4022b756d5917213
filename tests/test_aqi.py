"""CAQI and US EPA AQI (2024 PM2.5 breakpoints) at and between published breakpoints,
and the humidity flag on PM."""

from __future__ import annotations

import math

import pytest

from aircast.aqi import FLAG_HUMID, caqi, caqi_subindex, epa_subindex, pm_flags, us_aqi


@pytest.mark.parametrize(
    ("measure", "concentration", "index"),
    [
        ("P1", 0.0, 0.0),
        ("P1", 25.0, 25.0),
        ("P1", 50.0, 50.0),
        ("P1", 70.0, 62.5),  # halfway through 50-90 → 50-75
        ("P1", 90.0, 75.0),
        ("P1", 180.0, 100.0),
        ("P1", 270.0, 125.0),  # beyond the grid: the 90-180 band's slope continues
        ("P2", 15.0, 25.0),
        ("P2", 30.0, 50.0),
        ("P2", 55.0, 75.0),
        ("P2", 110.0, 100.0),
        ("P2", 7.5, 12.5),
    ],
)
def test_caqi_breakpoints(measure: str, concentration: float, index: float) -> None:
    assert caqi_subindex(measure, concentration) == pytest.approx(index)


@pytest.mark.parametrize(
    ("measure", "concentration", "index"),
    [
        # PM2.5 (2024): 0-9.0 | 9.1-35.4 | 35.5-55.4 | 55.5-125.4 | 125.5-225.4 | 225.5-325.4
        ("P2", 0.0, 0),
        ("P2", 9.0, 50),
        ("P2", 9.1, 51),
        ("P2", 9.05, 50),  # truncated to 9.0 first
        ("P2", 35.4, 100),
        ("P2", 35.5, 101),
        ("P2", 55.4, 150),
        ("P2", 55.5, 151),
        ("P2", 125.4, 200),
        ("P2", 125.5, 201),
        ("P2", 225.4, 300),
        ("P2", 225.5, 301),
        ("P2", 325.4, 500),
        ("P2", 12.0, 56),  # 51 + (12.0-9.1) * 49/26.3 = 56.4
        # PM10: 0-54 | 55-154 | 155-254 | 255-354 | 355-424 | 425-604
        ("P1", 54.0, 50),
        ("P1", 54.9, 50),  # truncated to 54
        ("P1", 55.0, 51),
        ("P1", 154.0, 100),
        ("P1", 155.0, 101),
        ("P1", 254.0, 150),
        ("P1", 354.0, 200),
        ("P1", 424.0, 300),
        ("P1", 425.0, 301),
        ("P1", 604.0, 500),
    ],
)
def test_epa_breakpoints_2024(measure: str, concentration: float, index: int) -> None:
    assert round(epa_subindex(measure, concentration)) == index


def test_index_is_the_worst_pollutant() -> None:
    both = caqi(30.0, 12.0)  # PM10 30 → 30; PM2.5 12 → 20
    assert both is not None
    assert (both.value, both.category, both.pollutant) == (30, "low", "P1")
    epa = us_aqi(30.0, 12.0)  # PM10 30 → 28; PM2.5 12 → 56
    assert epa is not None
    assert (epa.value, epa.category, epa.pollutant) == (56, "moderate", "P2")


@pytest.mark.parametrize(
    ("pm25", "caqi_category", "epa_category"),
    [
        (5.0, "very low", "good"),
        (20.0, "low", "moderate"),
        (40.0, "medium", "unhealthy for sensitive groups"),
        (80.0, "high", "unhealthy"),
        (150.0, "very high", "very unhealthy"),
        (300.0, "very high", "hazardous"),
    ],
)
def test_categories(pm25: float, caqi_category: str, epa_category: str) -> None:
    c, e = caqi(None, pm25), us_aqi(None, pm25)
    assert c is not None and e is not None
    assert (c.category, e.category) == (caqi_category, epa_category)


@pytest.mark.parametrize("bad", [None, math.nan, math.inf, -1.0])
def test_unusable_values_give_no_index(bad: float | None) -> None:
    assert caqi(bad, bad) is None
    assert us_aqi(bad, None) is None


def test_humidity_flag_above_70_percent() -> None:
    assert pm_flags(70.0) == ()
    assert pm_flags(70.1) == (FLAG_HUMID,)
    assert pm_flags(None) == ()
    assert pm_flags(math.nan) == ()
