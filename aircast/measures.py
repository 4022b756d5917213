"""The measure table: every measure's name, unit and valid range, defined once.

Every stage (scraper, Flink job, collector, training, Serve, Grafana manifests) takes
names, units and bounds from here. A value is valid when ``low <= value <= high``
(closed bounds: a bound is itself a plausible reading).

Why each range (the original job's bounds were exclusive and too tight):

* P1 / P2 (PM10 / PM2.5, µg/m³): 0 .. 999.9. The SDS011 (by far the most common
  sensor) measures 0.0-999.9 µg/m³; anything above is saturation or a fault (the
  Aberdeen archive has spikes near 2,000). 0.0 is a real reading in clean air after
  rounding, and the original's upper bound of 500 µg/m³ rejected real smog and
  bonfire episodes.
* temperature (°C): -50 .. 60. European records are -58 °C (Ust-Shchuger) and +48.8 °C
  (Sicily); the DHT22/BME280 stop at -40 °C. The original -30 .. 40 rejected real
  Nordic winters and southern heat waves; a sensor in the sun reads above air.
* humidity (%): 0 .. 100. 100 % is legitimate and common in fog and rain (a quarter of
  the Aberdeen archive's humidity values are 99.9 or 100.0).
* pressure_at_sealevel (Pa): 87,000 .. 108,500: the lowest (Typhoon Tip, 870 hPa) and
  highest (Tosontsengel, 1,084.8 hPa) sea-level pressures ever recorded.
* pressure (Pa, station pressure, what BME280/BMP280 report and the archive keeps):
  50,000 .. 108,500: 500 hPa is the station pressure at ~5,500 m, above any sensor.
* noise_LAeq, noise_LA_min, noise_LA_max (dB(A)): 20 .. 150. The DNMS noise sensor's
  floor is about 25 dB(A); 150 dB(A) is beyond any sustained outdoor level. The
  original's per-kind bounds (LA_min below 30, LA_max above 50) rejected ordinary city
  readings (a night-time LA_min is often 35-45 dB(A)).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Measure:
    """A measured quantity of the network (``name`` is the feed's ``value_type``)."""

    name: str
    label: str
    unit: str
    low: float
    high: float
    # Kafka topic used when readings are routed one topic per measure.
    topic: str

    def accepts(self, value: float) -> bool:
        return self.low <= value <= self.high


MEASURES: tuple[Measure, ...] = (
    Measure("P1", "PM10", "µg/m³", 0.0, 999.9, "p1-topic"),
    Measure("P2", "PM2.5", "µg/m³", 0.0, 999.9, "p2-topic"),
    Measure("temperature", "air temperature", "°C", -50.0, 60.0, "temperature-topic"),
    Measure("humidity", "relative humidity", "%", 0.0, 100.0, "humidity-topic"),
    Measure(
        "pressure_at_sealevel",
        "pressure reduced to sea level",
        "Pa",
        87_000.0,
        108_500.0,
        "pressure-sealevel-topic",
    ),
    Measure("pressure", "station pressure", "Pa", 50_000.0, 108_500.0, "pressure-topic"),
    Measure("noise_LAeq", "equivalent noise level", "dB(A)", 20.0, 150.0, "noise-laeq-topic"),
    Measure("noise_LA_min", "minimum noise level", "dB(A)", 20.0, 150.0, "noise-lamin-topic"),
    Measure("noise_LA_max", "maximum noise level", "dB(A)", 20.0, 150.0, "noise-lamax-topic"),
)

BY_NAME: dict[str, Measure] = {m.name: m for m in MEASURES}


def measure(name: str) -> Measure:
    """The measure called ``name``; ``KeyError`` names the known ones."""
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown measure {name!r}; known: {', '.join(BY_NAME)}") from None
