"""The HTTP API (FastAPI ingress of the Serve app) and the dashboard's static files.

Routes (OpenAPI at ``/docs`` and ``/openapi.json``)::

    GET  /                              → redirect to the dashboard /ui/
    GET  /health                        InfluxDB and Redis reachable?
    GET  /sensors                       every recent sensor: place, latest values, AQI, flags
    GET  /sensors/{id}/readings         ?measure&from&to&resolution=raw|10m&limit
    GET  /sensors/{id}/forecast         ?measure: horizons, model version, skill
    POST /admin/reload                  Bearer token: drop cached forecasts, recompute
    GET  /admin/refresh                 Bearer token: the last refresh's outcome

Input errors are 4xx with a ``detail``; an unknown sensor is 404; storage outages are
503. Nothing a client sends can produce a 500.
"""

# No `from __future__ import annotations` here: Serve's ingress rebuilds the route
# methods, and FastAPI can then no longer resolve string annotations (Request,
# Depends, Query parameters would silently become required query strings).
import asyncio
import hmac
import json
import logging
import math
import time
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

import redis
import redis.asyncio as aioredis
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from ray import serve
from ray.serve.handle import DeploymentHandle
from ray.util.metrics import Counter

from aircast import aqi
from aircast.cache import redis_client
from aircast.errors import StorageError
from aircast.influx import InfluxV1
from aircast.measures import BY_NAME
from aircast.queries import SensorSummary, latest_readings, readings, sensor_known
from aircast.registry import Registry
from aircast.settings import Settings
from aircast.telemetry import FORECASTS
from serve import forecasts, models

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
MeasureName = StrEnum("MeasureName", [(name, name) for name in BY_NAME])  # type: ignore[misc]
SensorId = Annotated[int, PathParam(ge=0, le=10**12, description="sensor.community sensor id")]
MeasureQuery = Annotated[MeasureName, Query(description="measure name (P1 = PM10, P2 = PM2.5)")]

# Oldest and newest instants a query may name (InfluxDB's int64-nanosecond range,
# rounded in).
_EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
_LATEST = datetime(2200, 1, 1, tzinfo=UTC)
MAX_SPAN_S = {"raw": 31 * 86_400, "10m": 366 * 86_400}
AQI_NOTE = (
    "AQI values are computed from the latest reading, not from the averaging periods "
    "the indices define (CAQI 1 h, US EPA 24 h): indicative only. "
    "humidity_above_70 marks PM readings taken above 70 % relative humidity."
)

app = FastAPI(
    title="aircast",
    version="0.1.0",
    description="Readings, air quality indices and forecasts of the sensor.community network.",
)
app.mount("/ui", StaticFiles(directory=STATIC_DIR, html=True), name="ui")
bearer = HTTPBearer(auto_error=False, description="settings.serve.admin_token")
_NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": models.Problem}}
_UNAVAILABLE: dict[int | str, dict[str, Any]] = {503: {"model": models.Problem}}
_ADMIN: dict[int | str, dict[str, Any]] = {
    401: {"model": models.Problem},
    403: {"model": models.Problem},
}


@app.exception_handler(StorageError)
async def _storage_unavailable(request: Request, exc: StorageError) -> JSONResponse:
    log.warning("storage unavailable path=%s error=%s", request.url.path, exc)
    return JSONResponse({"detail": f"storage unavailable: {exc}"}, status_code=503)


@app.exception_handler(redis.RedisError)
async def _cache_unavailable(request: Request, exc: redis.RedisError) -> JSONResponse:
    log.warning("redis unavailable path=%s error=%s", request.url.path, exc)
    return JSONResponse({"detail": f"cache unavailable: {exc}"}, status_code=503)


def _epoch(value: datetime | None, name: str, default: int) -> int:
    if value is None:
        return default
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    if not _EARLIEST <= value < _LATEST:
        raise HTTPException(422, f"'{name}' must be between 1970-01-01 and 2200-01-01")
    return int(value.timestamp())


def sensor_out(summary: SensorSummary, humidity: float | None) -> models.Sensor:
    """One sensor with units, AQI from its latest PM values, and humidity flags."""
    pm_flags = list(aqi.pm_flags(humidity))
    latest: dict[str, models.LatestValue] = {}
    for name, reading in summary.latest.items():
        latest[name] = models.LatestValue(
            value=reading.value,
            unit=BY_NAME[name].unit if name in BY_NAME else "",
            time=reading.time,
            flags=pm_flags if name in ("P1", "P2") else [],
        )
    pm10 = summary.latest["P1"].value if "P1" in summary.latest else None
    pm25 = summary.latest["P2"].value if "P2" in summary.latest else None
    has_pm = pm10 is not None or pm25 is not None
    return models.Sensor(
        id=summary.sensor_id,
        sensor_type=summary.sensor_type,
        location_id=summary.location_id,
        latitude=summary.latitude if math.isfinite(summary.latitude) else None,
        longitude=summary.longitude if math.isfinite(summary.longitude) else None,
        place=models.Place(
            city=summary.city, country=summary.country, country_code=summary.country_code
        ),
        last_seen=summary.last_seen,
        latest=latest,
        aqi=models.Aqi(caqi=_index(aqi.caqi(pm10, pm25)), us_epa=_index(aqi.us_aqi(pm10, pm25))),
        flags=pm_flags if has_pm else [],
    )


def _index(index: aqi.Index | None) -> models.IndexValue | None:
    if index is None:
        return None
    return models.IndexValue(value=index.value, category=index.category, pollutant=index.pollutant)  # type: ignore[arg-type]


def sensor_list(summaries: list[SensorSummary]) -> models.SensorList:
    """Sensors with AQI; humidity is taken from any sensor at the same location (a PM
    sensor usually shares its location with a separate humidity sensor)."""
    humidity: dict[int, tuple[int, float]] = {}
    for s in summaries:
        h = s.latest.get("humidity")
        if h is not None and s.location_id and h.time >= humidity.get(s.location_id, (0, 0.0))[0]:
            humidity[s.location_id] = (h.time, h.value)
    sensors = [
        sensor_out(s, humidity[s.location_id][1] if s.location_id in humidity else None)
        for s in summaries
    ]
    return models.SensorList(
        count=len(sensors), generated_at=int(time.time()), note=AQI_NOTE, sensors=sensors
    )


@serve.deployment
@serve.ingress(app)
class Api:
    def __init__(
        self,
        settings: Settings,
        forecaster: DeploymentHandle[Any],
        refresher: DeploymentHandle[Any],
    ) -> None:
        self.settings = settings
        self.forecaster = forecaster
        self.refresher = refresher
        self.influx = InfluxV1(settings.influx)
        self.redis = redis_client(settings.redis)
        password = settings.redis.password.get_secret_value() if settings.redis.password else None
        self.aredis = aioredis.Redis.from_url(
            settings.redis.url, password=password, decode_responses=True, socket_timeout=5.0
        )
        self.registry = Registry(settings.train.registry_dir, self.redis, settings.redis.key_prefix)
        self._sensors: tuple[float, bytes] | None = None
        self._sensors_lock = asyncio.Lock()
        self._known: dict[int, float] = {}  # sensor id → monotonic time it was seen
        # Hot forecasts kept for serve.forecast_memo_s: a lookup then skips Redis.
        self._memo: dict[tuple[str, int], tuple[float, bytes, str]] = {}
        self._served = Counter(
            FORECASTS.name, description=FORECASTS.description, tag_keys=FORECASTS.tags
        )

    # -- public ------------------------------------------------------------------

    @app.get("/", include_in_schema=False)
    async def root(self, request: Request) -> RedirectResponse:
        return RedirectResponse(str(request.url_for("ui", path="/")))

    @app.get("/dashboard/config", include_in_schema=False)
    async def dashboard_config(self) -> dict[str, Any]:
        s = self.settings.serve
        return {
            "tile_url": s.tile_url,
            "tile_attribution": s.tile_attribution,
            "measures": {m.name: {"label": m.label, "unit": m.unit} for m in BY_NAME.values()},
        }

    @app.get("/health", response_model=models.Health, responses=_UNAVAILABLE)
    async def health(self) -> JSONResponse:
        influx_ok = await asyncio.to_thread(self.influx.ping)
        try:
            redis_ok = bool(await self.aredis.ping())
        except redis.RedisError:
            redis_ok = False
        ok = influx_ok and redis_ok
        body = models.Health(status="ok" if ok else "degraded", influx=influx_ok, redis=redis_ok)
        return JSONResponse(body.model_dump(), status_code=200 if ok else 503)

    @app.get("/sensors", response_model=models.SensorList, responses=_UNAVAILABLE)
    async def sensors(self) -> Response:
        """Every sensor with a reading in the last ``serve.sensors_lookback_s`` seconds."""
        ttl = self.settings.serve.sensors_cache_s
        async with self._sensors_lock:
            cached = self._sensors
            if cached is None or time.monotonic() - cached[0] > ttl:
                summaries = await asyncio.to_thread(
                    latest_readings,
                    self.influx,
                    self.settings.influx.raw_database,
                    int(self.settings.serve.sensors_lookback_s),
                )
                body = sensor_list(summaries).model_dump_json().encode()
                cached = (time.monotonic(), body)
                self._sensors = cached
        return Response(cached[1], media_type="application/json")

    @app.get(
        "/sensors/{sensor_id}/readings",
        response_model=models.Readings,
        responses={**_NOT_FOUND, **_UNAVAILABLE},
    )
    async def sensor_readings(
        self,
        sensor_id: SensorId,
        measure: MeasureQuery,
        start: Annotated[
            datetime | None, Query(alias="from", description="ISO 8601 or epoch s; default to-24h")
        ] = None,
        end: Annotated[
            datetime | None, Query(alias="to", description="ISO 8601 or epoch s; default now")
        ] = None,
        resolution: Annotated[Literal["raw", "10m"], Query()] = "10m",
        limit: Annotated[int, Query(ge=1, le=50_000)] = 10_000,
    ) -> models.Readings:
        """A sensor's readings (``raw``) or 10-minute aggregates (``10m``) in [from, to)."""
        stop = _epoch(end, "to", int(time.time()))
        begin = _epoch(start, "from", stop - 86_400)
        if begin >= stop:
            raise HTTPException(422, "'from' must be before 'to'")
        if stop - begin > MAX_SPAN_S[resolution]:
            days = MAX_SPAN_S[resolution] // 86_400
            raise HTTPException(422, f"at most {days} days per request at resolution {resolution}")
        await self._require_sensor(sensor_id)
        db = (
            self.settings.influx.raw_database
            if resolution == "raw"
            else self.settings.influx.aggregates_database
        )
        points = await asyncio.to_thread(
            readings, self.influx, db, sensor_id, measure.value, begin, stop, resolution, limit
        )
        return models.Readings(
            sensor_id=sensor_id,
            measure=measure.value,
            unit=BY_NAME[measure.value].unit,
            resolution=resolution,
            start=begin,
            end=stop,
            truncated=len(points) >= limit,
            points=[
                models.ReadingPoint(time=p.time, value=p.value, min=p.min, max=p.max, count=p.count)
                for p in points
            ],
        )

    @app.get(
        "/sensors/{sensor_id}/forecast",
        response_model=models.Forecast,
        responses={**_NOT_FOUND, **_UNAVAILABLE},
    )
    async def sensor_forecast(self, sensor_id: SensorId, measure: MeasureQuery) -> Response:
        """The stored forecast (a lookup); computed on the spot if none is stored."""
        memo_key = (measure.value, sensor_id)
        memo = self._memo.get(memo_key)
        if memo is not None and time.monotonic() - memo[0] < self.settings.serve.forecast_memo_s:
            self._served.inc(tags={"kind": memo[2]})
            return Response(memo[1], media_type="application/json")
        cached = await self.aredis.get(
            forecasts.cache_key(self.settings.redis, measure.value, sensor_id)
        )
        if cached is not None:
            kind = str(json.loads(cached)["model"]["kind"])
            if self.settings.serve.forecast_memo_s > 0:
                if len(self._memo) > 100_000:
                    self._memo.clear()
                self._memo[memo_key] = (time.monotonic(), cached.encode(), kind)
            self._served.inc(tags={"kind": kind})
            return Response(cached, media_type="application/json")
        await self._require_sensor(sensor_id)
        entry = await asyncio.to_thread(self.registry.latest, sensor_id, measure.value)
        handle = self.forecaster
        if entry is not None and entry.kind == "rnn":
            handle = handle.options(multiplexed_model_id=forecasts.model_id(entry))
        result = await handle.forecast.remote(sensor_id, measure.value)
        if result is None:
            raise HTTPException(
                404,
                f"no 10-minute aggregates of {measure.value} for sensor {sensor_id} recently; "
                "nothing to forecast from",
            )
        self._served.inc(tags={"kind": str(result["model"]["kind"])})
        return Response(json.dumps({**result, "source": "computed"}), media_type="application/json")

    # -- admin -------------------------------------------------------------------

    def _require_admin(self, credentials: HTTPAuthorizationCredentials | None) -> None:
        if credentials is None or credentials.scheme.lower() != "bearer":
            raise HTTPException(
                401,
                "admin route: send Authorization: Bearer <token>",
                {"WWW-Authenticate": "Bearer"},
            )
        expected = self.settings.serve.admin_token.get_secret_value().encode()
        if not hmac.compare_digest(credentials.credentials.encode(), expected):
            raise HTTPException(403, "invalid admin token")

    @app.post(
        "/admin/reload",
        response_model=models.RefreshStatus,
        responses=_ADMIN,
    )
    async def admin_reload(
        self,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> dict[str, Any]:
        """Drop every cached forecast and recompute all with the registry's current models."""
        self._require_admin(credentials)
        result: dict[str, Any] = await self.refresher.reload.remote()
        return result

    @app.get(
        "/admin/refresh",
        response_model=models.RefreshStatus,
        responses=_ADMIN,
    )
    async def admin_refresh_status(
        self,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> dict[str, Any]:
        """The outcome of the last scheduled forecast refresh."""
        self._require_admin(credentials)
        result: dict[str, Any] = await self.refresher.status.remote()
        return result

    # -- helpers -----------------------------------------------------------------

    async def _require_sensor(self, sensor_id: int) -> None:
        seen = self._known.get(sensor_id)
        if seen is not None and time.monotonic() - seen < 300:
            return
        s = self.settings.influx
        dbs = (s.raw_database, s.aggregates_database)
        if not await asyncio.to_thread(sensor_known, self.influx, dbs, sensor_id):
            raise HTTPException(404, f"unknown sensor {sensor_id}")
        if len(self._known) > 100_000:
            self._known.clear()
        self._known[sensor_id] = time.monotonic()
