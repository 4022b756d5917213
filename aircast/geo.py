"""Area filters of the sensor listing: a bounding box and a circle around a point.

Parameters are parsed as the OpenAQ API spells them: ``bbox=min_lon,min_lat,
max_lon,max_lat`` (WGS 84 degrees, longitude first, as GeoJSON) and ``near=lat,lon``
with ``radius_km``. Distances are great-circle distances on a sphere of the mean
Earth radius (haversine): within 0.5 % of the ellipsoid, far below a sensor's
placement error at the radii a listing is asked for.

A malformed parameter raises :class:`ValueError` whose message is the reason, for
the API to return as a 422.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

EARTH_RADIUS_KM = 6371.0088  # IUGG mean radius
# The farthest two points on the sphere are half its circumference apart.
MAX_RADIUS_KM = math.pi * EARTH_RADIUS_KM


@dataclass(frozen=True, slots=True)
class BBox:
    min_lon: float
    min_lat: float
    max_lon: float
    max_lat: float

    def contains(self, lat: float, lon: float) -> bool:
        """Edges included; a NaN coordinate is never inside."""
        return self.min_lat <= lat <= self.max_lat and self.min_lon <= lon <= self.max_lon


@dataclass(frozen=True, slots=True)
class Circle:
    lat: float
    lon: float
    radius_km: float

    def contains(self, lat: float, lon: float) -> bool:
        if not (math.isfinite(lat) and math.isfinite(lon)):
            return False
        return haversine_km(self.lat, self.lon, lat, lon) <= self.radius_km


def haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in km between two points given in degrees."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(h)))


def _numbers(text: str, name: str, count: int, spelled: str) -> list[float]:
    parts = text.split(",")
    if len(parts) != count:
        raise ValueError(f"'{name}' must be {spelled} ({count} numbers), got {text!r}")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise ValueError(f"'{name}' must be {spelled} (numbers), got {text!r}") from None
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"'{name}' must be finite numbers, got {text!r}")
    return values


def _check_lat(value: float, name: str) -> None:
    if not -90.0 <= value <= 90.0:
        raise ValueError(f"'{name}': latitude {value} is outside -90..90")


def _check_lon(value: float, name: str) -> None:
    if not -180.0 <= value <= 180.0:
        raise ValueError(f"'{name}': longitude {value} is outside -180..180")


def parse_bbox(text: str) -> BBox:
    """``min_lon,min_lat,max_lon,max_lat`` → :class:`BBox` (a box may not cross the
    antimeridian: ask for its two halves instead)."""
    spelled = "min_lon,min_lat,max_lon,max_lat"
    min_lon, min_lat, max_lon, max_lat = _numbers(text, "bbox", 4, spelled)
    for lon in (min_lon, max_lon):
        _check_lon(lon, "bbox")
    for lat in (min_lat, max_lat):
        _check_lat(lat, "bbox")
    if min_lon > max_lon or min_lat > max_lat:
        raise ValueError(f"'bbox' must be {spelled} with min <= max, got {text!r}")
    return BBox(min_lon, min_lat, max_lon, max_lat)


def parse_circle(near: str, radius_km: float | None) -> Circle:
    """``near=lat,lon`` and ``radius_km`` → :class:`Circle`."""
    lat, lon = _numbers(near, "near", 2, "lat,lon")
    _check_lat(lat, "near")
    _check_lon(lon, "near")
    if radius_km is None:
        raise ValueError("'near' needs 'radius_km' (the circle's radius in km)")
    if not (math.isfinite(radius_km) and 0.0 < radius_km <= MAX_RADIUS_KM):
        raise ValueError(f"'radius_km' must be above 0 and at most {MAX_RADIUS_KM:.0f}")
    return Circle(lat, lon, radius_km)


def area(bbox: str | None, near: str | None, radius_km: float | None) -> BBox | Circle | None:
    """The area a listing asks for (None: everywhere); at most one kind of area."""
    if bbox is not None and near is not None:
        raise ValueError("give either 'bbox' or 'near' (with 'radius_km'), not both")
    if bbox is not None:
        if radius_km is not None:
            raise ValueError("'radius_km' goes with 'near', not with 'bbox'")
        return parse_bbox(bbox)
    if near is not None:
        return parse_circle(near, radius_km)
    if radius_km is not None:
        raise ValueError("'radius_km' needs 'near=lat,lon' (the circle's centre)")
    return None
