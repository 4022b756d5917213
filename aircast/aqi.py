"""Air quality indices from particulate matter (PM10 = measure ``P1``, PM2.5 = ``P2``).

Two published indices, each the maximum of its per-pollutant sub-indices, each
sub-index piecewise linear between the published breakpoints:

* **CAQI** (Common Air Quality Index, CiteairII, hourly grid, "background" and
  "roadside" share the PM grid): PM10 0/25/50/90/180 and PM2.5 0/15/30/55/110 µg/m³
  map to index 0/25/50/75/100; classes very low < 25 <= low < 50 <= medium < 75 <=
  high <= 100 < very high. Above 100 the index continues on the last band's slope
  (the grid only says "> 100").
* **US EPA AQI**, 2024 revision of the PM2.5 breakpoints (final rule of 7 Feb 2024,
  in force 6 May 2024): PM2.5 0.0-9.0 / 9.1-35.4 / 35.5-55.4 / 55.5-125.4 /
  125.5-225.4 / 225.5-325.4 µg/m³ and PM10 0-54 / 55-154 / 155-254 / 255-354 /
  355-424 / 425-604 µg/m³ map to 0-50 / 51-100 / 101-150 / 151-200 / 201-300 /
  301-500. Concentrations are truncated first (PM2.5 to 0.1, PM10 to 1 µg/m³) as the
  technical assistance document asks; above the top breakpoint the hazardous band's
  equation continues (index above 500).

Caveat, stated where the numbers are shown: both indices are defined on averages
(CAQI hourly; EPA AQI 24-hour for PM). The API applies them to the latest reading
or 10-minute mean, so they are indicative "now" values, not regulatory figures.

Low-cost optical PM sensors (SDS011 and kin) over-read when particles take up water,
so a PM value is flagged when the relative humidity at the same location is above
:data:`HUMID_RH` (70 %).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

# Relative humidity (%) above which optical PM readings are unreliable (hygroscopic
# growth of the particles).
HUMID_RH = 70.0
FLAG_HUMID = "humidity_above_70"

Band = tuple[float, float, float, float]  # c_low, c_high, i_low, i_high

CAQI_PM10: tuple[Band, ...] = (
    (0.0, 25.0, 0.0, 25.0),
    (25.0, 50.0, 25.0, 50.0),
    (50.0, 90.0, 50.0, 75.0),
    (90.0, 180.0, 75.0, 100.0),
)
CAQI_PM25: tuple[Band, ...] = (
    (0.0, 15.0, 0.0, 25.0),
    (15.0, 30.0, 25.0, 50.0),
    (30.0, 55.0, 50.0, 75.0),
    (55.0, 110.0, 75.0, 100.0),
)
CAQI_CLASSES: tuple[tuple[float, str], ...] = (
    (25.0, "very low"),
    (50.0, "low"),
    (75.0, "medium"),
    (100.0, "high"),
)

EPA_PM25: tuple[Band, ...] = (
    (0.0, 9.0, 0.0, 50.0),
    (9.1, 35.4, 51.0, 100.0),
    (35.5, 55.4, 101.0, 150.0),
    (55.5, 125.4, 151.0, 200.0),
    (125.5, 225.4, 201.0, 300.0),
    (225.5, 325.4, 301.0, 500.0),
)
EPA_PM10: tuple[Band, ...] = (
    (0.0, 54.0, 0.0, 50.0),
    (55.0, 154.0, 51.0, 100.0),
    (155.0, 254.0, 101.0, 150.0),
    (255.0, 354.0, 151.0, 200.0),
    (355.0, 424.0, 201.0, 300.0),
    (425.0, 604.0, 301.0, 500.0),
)
EPA_CATEGORIES: tuple[tuple[float, str], ...] = (
    (50.0, "good"),
    (100.0, "moderate"),
    (150.0, "unhealthy for sensitive groups"),
    (200.0, "unhealthy"),
    (300.0, "very unhealthy"),
)


@dataclass(frozen=True, slots=True)
class Index:
    """One index value: rounded, its class, and the pollutant that set it."""

    value: int
    category: str
    pollutant: str  # "P1" (PM10) or "P2" (PM2.5)


def _interpolate(c: float, bands: tuple[Band, ...]) -> float:
    for c_lo, c_hi, i_lo, i_hi in bands:
        if c <= c_hi:
            # EPA bands leave gaps (9.0 → 9.1) that truncation never lands in;
            # max() keeps a non-truncated value inside its band anyway.
            return i_lo + (max(c, c_lo) - c_lo) * (i_hi - i_lo) / (c_hi - c_lo)
    c_lo, c_hi, i_lo, i_hi = bands[-1]
    return i_lo + (c - c_lo) * (i_hi - i_lo) / (c_hi - c_lo)


def _usable(value: float | None) -> bool:
    return value is not None and math.isfinite(value) and value >= 0.0


def _category(value: float, classes: tuple[tuple[float, str], ...], top: str) -> str:
    # Both grids publish closed upper bounds ("0-25", "0-50").
    for upper, name in classes:
        if value <= upper:
            return name
    return top


def caqi_subindex(measure: str, concentration: float) -> float:
    """CAQI sub-index of PM10 (``P1``) or PM2.5 (``P2``), unrounded."""
    return _interpolate(concentration, CAQI_PM10 if measure == "P1" else CAQI_PM25)


def epa_subindex(measure: str, concentration: float) -> float:
    """US EPA AQI sub-index (2024 PM2.5 breakpoints), after the EPA truncation."""
    if measure == "P1":
        return _interpolate(math.floor(concentration), EPA_PM10)
    return _interpolate(math.floor(concentration * 10.0 + 1e-9) / 10.0, EPA_PM25)


def _index(
    pm10: float | None,
    pm25: float | None,
    sub: Callable[[str, float], float],
    classes: tuple[tuple[float, str], ...],
    top: str,
) -> Index | None:
    candidates = [
        (sub(m, c), m) for m, c in (("P1", pm10), ("P2", pm25)) if c is not None and _usable(c)
    ]
    if not candidates:
        return None
    value, pollutant = max(candidates)
    rounded = round(value)
    return Index(rounded, _category(rounded, classes, top), pollutant)


def caqi(pm10: float | None, pm25: float | None) -> Index | None:
    """The CAQI of whichever PM values are known (None if neither is)."""
    return _index(pm10, pm25, caqi_subindex, CAQI_CLASSES, "very high")


def us_aqi(pm10: float | None, pm25: float | None) -> Index | None:
    """The US EPA AQI (2024 revision) of whichever PM values are known."""
    return _index(pm10, pm25, epa_subindex, EPA_CATEGORIES, "hazardous")


def pm_flags(humidity: float | None) -> tuple[str, ...]:
    """Quality flags on PM readings given the relative humidity at the same location."""
    if humidity is not None and math.isfinite(humidity) and humidity > HUMID_RH:
        return (FLAG_HUMID,)
    return ()
