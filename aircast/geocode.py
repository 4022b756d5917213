"""Reverse geocoding: a location's city, region and country, cached in Redis.

Providers share one interface (``places(points) -> list[Place | None]``):

* :class:`OfflineGeocoder` (default): GeoNames cities (population ≥ 1,000; CC BY 4.0,
  geonames.org) through PyPI ``reverse-geocode``, a k-d tree in memory. A
  network-size snapshot (15,000+ locations) geocodes in tens of milliseconds: no
  warm-up, no rate limit, no network.
* :class:`NominatimGeocoder` (opt-in): OpenStreetMap's Nominatim, at most one request
  per second across the process (their usage policy), behind a lock.

:class:`CachedGeocoder` puts Redis in front: one key per location id
(``<prefix>place:<location_id>``: city, region, country, country_code and the
coordinates it was computed for, joined by the ASCII unit separator — cheaper than JSON
for a whole snapshot) with a TTL, read for a whole snapshot with one MGET
and written in one pipeline (Redis 7.0 has no per-field TTL in hashes). A location
whose coordinates changed is geocoded again. A failed lookup is never cached.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Any, Protocol

import httpx
import redis

from aircast.cache import key, set_many
from aircast.records import Place
from aircast.settings import IngestSettings, RedisSettings

log = logging.getLogger(__name__)

Point = tuple[float, float]
_SEP = "\x1f"  # ASCII unit separator: never part of a place name


class Geocoder(Protocol):
    def places(self, points: Sequence[Point]) -> list[Place | None]: ...


class OfflineGeocoder:
    """GeoNames cities through ``reverse-geocode`` (loaded once per process)."""

    def __init__(self) -> None:
        try:
            import reverse_geocode
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError(
                "offline geocoding needs PyPI reverse-geocode: pip install 'aircast[app]'"
            ) from exc
        self._rg: Any = reverse_geocode
        self._rg.get((0.0, 0.0))  # build the k-d tree now, not on the first snapshot

    def places(self, points: Sequence[Point]) -> list[Place | None]:
        if not points:
            return []
        found = self._rg.search(list(points))
        return [
            Place(
                city=str(hit.get("city") or ""),
                region=str(hit.get("state") or ""),
                country=str(hit.get("country") or ""),
                country_code=str(hit.get("country_code") or ""),
            )
            for hit in found
        ]


class NominatimGeocoder:
    """Nominatim reverse geocoding, one request per second per process."""

    _lock = threading.Lock()
    _last = 0.0

    def __init__(self, url: str, timeout_s: float = 10.0, user_agent: str = "aircast") -> None:
        self._http = httpx.Client(timeout=timeout_s, headers={"User-Agent": user_agent})
        self.url = url

    def _one(self, lat: float, lon: float) -> Place | None:
        with NominatimGeocoder._lock:
            wait = 1.0 - (time.monotonic() - NominatimGeocoder._last)
            if wait > 0:
                time.sleep(wait)
            try:
                response = self._http.get(
                    self.url, params={"lat": lat, "lon": lon, "format": "jsonv2", "zoom": 10}
                )
            finally:
                NominatimGeocoder._last = time.monotonic()
        if response.status_code != 200:
            log.warning("nominatim failed status=%d lat=%s lon=%s", response.status_code, lat, lon)
            return None
        address = response.json().get("address", {})
        return Place(
            city=str(address.get("city") or address.get("town") or address.get("village") or ""),
            region=str(address.get("state") or ""),
            country=str(address.get("country") or ""),
            country_code=str(address.get("country_code") or "").upper(),
        )

    def places(self, points: Sequence[Point]) -> list[Place | None]:
        out: list[Place | None] = []
        for lat, lon in points:
            try:
                out.append(self._one(lat, lon))
            except httpx.HTTPError as exc:
                log.warning("nominatim unreachable lat=%s lon=%s error=%s", lat, lon, exc)
                out.append(None)
        return out


def make_geocoder(settings: IngestSettings) -> Geocoder:
    if settings.geocoder == "nominatim":
        return NominatimGeocoder(settings.nominatim_url, settings.timeout_s)
    return OfflineGeocoder()


class CachedGeocoder:
    """Redis in front of a geocoder; counts hits and misses."""

    def __init__(
        self, geocoder: Geocoder, client: redis.Redis[str], settings: RedisSettings, ttl_s: int
    ) -> None:
        self.geocoder = geocoder
        self.redis = client
        self.redis_settings = settings
        self.ttl_s = ttl_s
        self.hits = 0
        self.misses = 0

    def _key(self, location_id: int) -> str:
        return key(self.redis_settings, "place", str(location_id))

    def places(self, locations: dict[int, Point]) -> dict[int, Place]:
        """Places for ``{location_id: (lat, lon)}``; a location the provider could not
        place is absent from the result (and not cached)."""
        ids = list(locations)
        cached = self.redis.mget([self._key(i) for i in ids]) if ids else []
        result: dict[int, Place] = {}
        missing: list[int] = []
        for location_id, hit in zip(ids, cached, strict=True):
            lat, lon = locations[location_id]
            if hit:
                parts = hit.split(_SEP)
                if len(parts) == 6 and parts[4] == f"{lat:.5f}" and parts[5] == f"{lon:.5f}":
                    result[location_id] = Place(parts[0], parts[1], parts[2], parts[3])
                    continue
            missing.append(location_id)
        self.hits += len(result)
        self.misses += len(missing)
        if not missing:
            return result
        found = self.geocoder.places([locations[i] for i in missing])
        fresh: dict[str, str] = {}
        for location_id, place in zip(missing, found, strict=True):
            if place is None:
                continue  # never cache a failure
            lat, lon = locations[location_id]
            fresh[self._key(location_id)] = _SEP.join(
                (
                    place.city,
                    place.region,
                    place.country,
                    place.country_code,
                    f"{lat:.5f}",
                    f"{lon:.5f}",
                )
            )
            result[location_id] = place
        set_many(self.redis, fresh, self.ttl_s)
        return result
