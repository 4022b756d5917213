"""The HTTP API (FastAPI ingress of the Serve app) and the dashboard's static files.

Every public route lives under the stable prefix ``/v1`` (OpenAPI at ``/docs`` and
``/openapi.json``); the unversioned paths of earlier releases answer the same, as
aliases left out of the schema::

    GET  /                                 → redirect to the dashboard /ui/
    GET  /v1/health                        InfluxDB and Redis reachable?
    GET  /v1/dashboard/config              map tiles and the measure table
    GET  /v1/sensors                       recent sensors: ?bbox | ?near&radius_km,
                                           ?measure, ?limit&page|offset (with the total)
    GET  /v1/map                           ?measure: one measure's map layer, as columns
    GET  /v1/sensors/{id}/readings         ?measure&from&to&resolution=raw|10m|1h|1d
                                           &limit&format=json|csv
    GET  /v1/sensors/{id}/forecast         ?measure: horizons, model version, skill
    POST /v1/admin/reload                  Bearer token: drop cached forecasts, recompute
    GET  /v1/admin/refresh                 Bearer token: the last refresh's outcome
    POST /v1/alerts/rules                  Bearer token: a threshold rule (docs/alerts.md)
    GET  /v1/alerts/rules[/{id}]           Bearer token: the rules, or one
    DELETE /v1/alerts/rules/{id}           Bearer token: remove a rule and its episodes

The data is sensor.community's, under the ODbL: JSON bodies carry a ``licence``
object, other bodies a ``Link: <...>; rel="license"`` header (aircast.licence).
``/v1/sensors`` and ``/v1/map`` are cached, gzipped once per rebuild and revalidated
with their ETag (``If-None-Match`` → 304). CORS follows ``serve.cors_origins`` (no
CORS headers at all when it is empty).

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
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

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
from starlette.middleware.cors import CORSMiddleware
from starlette.middleware.gzip import GZipMiddleware

from aircast import aqi, export, forecasts, geo, licence, maplayer, paging, tuning
from aircast.alert_store import AlertStore
from aircast.alerts import Rule, RuleSpec
from aircast.cache import redis_client
from aircast.errors import StorageError
from aircast.httpcache import CachedBody, accepts_gzip, etag_matches
from aircast.influx import InfluxV1
from aircast.measures import BY_NAME
from aircast.queries import (
    SensorSummary,
    grouped_readings,
    latest_located,
    latest_readings,
    readings,
    sensor_known,
    window_means,
)
from aircast.records import AGGREGATE_WINDOW_S
from aircast.refreshing import Refreshing
from aircast.registry import Registry
from aircast.settings import Settings
from aircast.telemetry import FORECASTS
from serve import alert_routes, models

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
V1 = "/v1"
MeasureName = StrEnum("MeasureName", [(name, name) for name in BY_NAME])  # type: ignore[misc]
SensorId = Annotated[int, PathParam(ge=0, le=10**12, description="sensor.community sensor id")]
MeasureQuery = Annotated[MeasureName, Query(description="measure name (P1 = PM10, P2 = PM2.5)")]
Resolution = Literal["raw", "10m", "1h", "1d"]
DEFAULT_MAP_MEASURE = MeasureName("P2")

# Oldest and newest instants a query may name (InfluxDB's int64-nanosecond range,
# rounded in).
_EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
_LATEST = datetime(2200, 1, 1, tzinfo=UTC)
GROUP_INTERVAL: dict[str, Literal["1h", "1d"]] = {"1h": "1h", "1d": "1d"}
AQI_NOTE = (
    "AQI values are computed from the latest reading, not from the averaging periods "
    "the indices define (CAQI 1 h, US EPA 24 h): indicative only (GET /v1/map has "
    "CAQI of the 1 h and 24 h means). "
    "humidity_above_70 marks PM readings taken above 70 % relative humidity."
)

app = FastAPI(
    title="aircast",
    version="1.0.0",
    description=(
        "Readings, air quality indices and forecasts of the sensor.community network. "
        "Data: sensor.community contributors, ODbL-1.0."
    ),
)
app.mount("/ui", StaticFiles(directory=STATIC_DIR, html=True), name="ui")
# Compresses what a route has not compressed itself (cached bodies come gzipped).
app.add_middleware(GZipMiddleware, minimum_size=1_000, compresslevel=6)
bearer = HTTPBearer(auto_error=False, description="settings.serve.admin_token")
_NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": models.Problem}}
_UNAVAILABLE: dict[int | str, dict[str, Any]] = {503: {"model": models.Problem}}
_NOT_MODIFIED: dict[int | str, dict[str, Any]] = {
    304: {"description": "unchanged since the ETag sent in If-None-Match"}
}
_ADMIN: dict[int | str, dict[str, Any]] = {
    401: {"model": models.Problem},
    403: {"model": models.Problem},
}

F = TypeVar("F", bound=Callable[..., Any])


def route(method: str, path: str, **options: Any) -> Callable[[F], F]:
    """Register ``/v1{path}`` in the schema and ``{path}``, the unversioned alias of
    earlier releases, outside it: both call the same method."""

    def register(endpoint: F) -> F:
        app.add_api_route(V1 + path, endpoint, methods=[method], **options)
        app.add_api_route(path, endpoint, methods=[method], include_in_schema=False, **options)
        return endpoint

    return register


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


def sensor_models(summaries: list[SensorSummary]) -> list[models.Sensor]:
    """Sensors with AQI; humidity is taken from any sensor at the same location (a PM
    sensor usually shares its location with a separate humidity sensor)."""
    humidity: dict[int, tuple[int, float]] = {}
    for s in summaries:
        h = s.latest.get("humidity")
        if h is not None and s.location_id and h.time >= humidity.get(s.location_id, (0, 0.0))[0]:
            humidity[s.location_id] = (h.time, h.value)
    return [
        sensor_out(s, humidity[s.location_id][1] if s.location_id in humidity else None)
        for s in summaries
    ]


@dataclass
class SensorSnapshot:
    """Every recent sensor as read at ``generated_at``, and the bodies of the listings
    already answered from it (a repeated query costs a dict lookup)."""

    generated_at: int
    summaries: list[SensorSummary]
    sensors: list[models.Sensor]
    bodies: dict[tuple[Any, ...], CachedBody] = field(default_factory=dict)


def cached_response(
    request: Request, cached: CachedBody, media_type: str = "application/json"
) -> Response:
    """304 when the client holds this body; else the body, gzipped if accepted."""
    headers = {"ETag": cached.etag, "Cache-Control": "no-cache", "Vary": "Accept-Encoding"}
    if etag_matches(request.headers.get("if-none-match"), cached.etag):
        return Response(status_code=304, headers=headers)
    if accepts_gzip(request.headers.get("accept-encoding")):
        headers["Content-Encoding"] = "gzip"
        return Response(cached.gzipped, media_type=media_type, headers=headers)
    return Response(cached.body, media_type=media_type, headers=headers)


def _unprocessable(exc: ValueError) -> HTTPException:
    return HTTPException(422, str(exc))


@serve.deployment(graceful_shutdown_wait_loop_s=tuning.SERVE_DRAIN_POLL_S)
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
        self.alerts = AlertStore(self.redis, settings.redis)
        s = settings.serve
        self._sensors: Refreshing[SensorSnapshot] = Refreshing(
            self._read_sensors, s.sensors_cache_s
        )
        # Map layers per measure, rebuilt in the background after serve.map_cache_s. The
        # 24 h means move by at most 1/144 of a change per new 10-minute window: they
        # are re-read less often (up to once a window), which halves a rebuild's cost.
        self._maps: Refreshing[CachedBody] = Refreshing(self._build_map, s.map_cache_s)
        self._means_24h: Refreshing[dict[int, float]] = Refreshing(
            self._read_means_24h, min(float(AGGREGATE_WINDOW_S), 10 * s.map_cache_s)
        )
        self._known: dict[int, float] = {}  # sensor id → monotonic time it was seen
        # Hot forecasts kept for serve.forecast_memo_s: a lookup then skips Redis.
        self._memo: dict[tuple[str, int], tuple[float, bytes, str]] = {}
        self._served = Counter(
            FORECASTS.name, description=FORECASTS.description, tag_keys=FORECASTS.tags
        )

    def __serve_build_asgi_app__(self) -> FastAPI:
        """Serve's hook after __init__: this replica's copy of ``app`` (routes bound to
        this instance), with CORS for ``serve.cors_origins``, a setting known only now."""
        asgi: FastAPI = self.__dict__["_asgi_app"]  # set by the ingress wrapper
        origins = list(self.settings.serve.cors_origins)
        if origins:
            asgi.add_middleware(
                CORSMiddleware,
                allow_origins=origins,
                allow_methods=["GET", "HEAD", "POST", "DELETE", "OPTIONS"],
                allow_headers=["Authorization", "Content-Type", "If-None-Match"],
                expose_headers=["ETag", "Link", "Content-Disposition"],
                max_age=600,
            )
        return asgi

    # -- public ------------------------------------------------------------------

    @app.get("/", include_in_schema=False)
    async def root(self, request: Request) -> RedirectResponse:
        return RedirectResponse(str(request.url_for("ui", path="/")))

    @route("GET", "/dashboard/config", response_model=models.DashboardConfig)
    async def dashboard_config(self) -> dict[str, Any]:
        """Map tiles (none: the offline basemap) and the measure table."""
        s = self.settings.serve
        return {
            "tile_url": s.tile_url,
            "tile_attribution": s.tile_attribution,
            "measures": {m.name: {"label": m.label, "unit": m.unit} for m in BY_NAME.values()},
        }

    @route("GET", "/health", response_model=models.Health, responses=_UNAVAILABLE)
    async def health(self) -> JSONResponse:
        """InfluxDB and Redis reachable? 503 when either is not."""
        influx_ok = await asyncio.to_thread(self.influx.ping)
        try:
            redis_ok = bool(await self.aredis.ping())
        except redis.RedisError:
            redis_ok = False
        ok = influx_ok and redis_ok
        body = models.Health(status="ok" if ok else "degraded", influx=influx_ok, redis=redis_ok)
        return JSONResponse(body.model_dump(), status_code=200 if ok else 503)

    @route(
        "GET",
        "/sensors",
        response_model=models.SensorList,
        responses={**_NOT_MODIFIED, **_UNAVAILABLE},
    )
    async def sensors(
        self,
        request: Request,
        bbox: Annotated[
            str | None,
            Query(
                description="min_lon,min_lat,max_lon,max_lat (WGS 84 degrees, OpenAQ order)",
                examples=["9.0,48.6,9.4,48.9"],
                max_length=200,
            ),
        ] = None,
        near: Annotated[
            str | None,
            Query(description="lat,lon: the centre of a circle", examples=["48.78,9.18"]),
        ] = None,
        radius_km: Annotated[
            float | None,
            Query(gt=0, le=geo.MAX_RADIUS_KM, description="the circle's radius (with near)"),
        ] = None,
        measure: Annotated[
            MeasureName | None, Query(description="only sensors that reported this measure")
        ] = None,
        limit: Annotated[
            int | None,
            Query(
                ge=1, description="page size: default serve.page_size, at most serve.page_size_max"
            ),
        ] = None,
        page: Annotated[int | None, Query(ge=1, le=10**9, description="1-based page")] = None,
        offset: Annotated[int | None, Query(ge=0, le=10**12, description="items to skip")] = None,
    ) -> Response:
        """Sensors with a reading in the last ``serve.sensors_lookback_s`` seconds, in an
        area (``bbox`` or ``near`` + ``radius_km``) and with a measure if asked, by id,
        one page at a time; ``total`` counts every match."""
        s = self.settings.serve
        try:
            area = geo.area(bbox, near, radius_km)
            pg = paging.page(limit, page, offset, s.page_size, s.page_size_max)
        except ValueError as exc:
            raise _unprocessable(exc) from None
        snapshot = await self._sensors.get("all")
        wanted = None if measure is None else measure.value
        key = (area, wanted, pg)
        cached = snapshot.bodies.get(key)
        if cached is None:
            cached = await asyncio.to_thread(self._sensor_page, snapshot, area, wanted, pg)
            if len(snapshot.bodies) >= tuning.MAX_CACHED_QUERIES:
                snapshot.bodies.clear()
            snapshot.bodies[key] = cached
        return cached_response(request, cached)

    @app.get(
        V1 + "/map",
        response_model=models.MapLayer,
        responses={**_NOT_MODIFIED, **_UNAVAILABLE},
    )
    async def map_layer(
        self,
        request: Request,
        measure: Annotated[
            MeasureName, Query(description="measure name (P1 = PM10, P2 = PM2.5)")
        ] = DEFAULT_MAP_MEASURE,
    ) -> Response:
        """Every sensor that reported ``measure`` recently, as columns (latest value,
        1 h and 24 h means, CAQI of those means); rebuilt at most every
        ``serve.map_cache_s``; revalidate with ``If-None-Match``."""
        return cached_response(request, await self._maps.get(measure.value))

    @route(
        "GET",
        "/sensors/{sensor_id}/readings",
        response_model=models.Readings,
        responses={
            200: {"content": {"text/csv": {}}, "description": "JSON, or CSV with format=csv"},
            **_NOT_FOUND,
            **_UNAVAILABLE,
        },
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
        resolution: Annotated[
            Resolution,
            Query(description="raw readings, or 10-minute, hourly or daily aggregates"),
        ] = "10m",
        limit: Annotated[int, Query(ge=1, le=50_000)] = 10_000,
        fmt: Annotated[
            Literal["json", "csv"], Query(alias="format", description="json, or csv to download")
        ] = "json",
    ) -> Response:
        """A sensor's readings (``raw``) or aggregates (``10m``, ``1h``, ``1d``: mean of
        the 10-minute means, min, max, number of readings) in [from, to)."""
        stop = _epoch(end, "to", int(time.time()))
        begin = _epoch(start, "from", stop - 86_400)
        if begin >= stop:
            raise HTTPException(422, "'from' must be before 'to'")
        if stop - begin > tuning.READINGS_MAX_SPAN_S[resolution]:
            days = tuning.READINGS_MAX_SPAN_S[resolution] // 86_400
            raise HTTPException(422, f"at most {days} days per request at resolution {resolution}")
        await self._require_sensor(sensor_id)
        source, points = await asyncio.to_thread(
            self._read_points, sensor_id, measure.value, begin, stop, resolution, limit
        )
        unit = BY_NAME[measure.value].unit
        if fmt == "csv":
            text = export.readings_csv(sensor_id, measure.value, unit, resolution, points)
            name = export.filename(sensor_id, measure.value, resolution, begin, stop)
            return Response(
                text,
                media_type="text/csv; charset=utf-8",
                headers={
                    "Content-Disposition": f'attachment; filename="{name}"',
                    "Link": licence.link_header(),
                },
            )
        body = models.Readings(
            sensor_id=sensor_id,
            measure=measure.value,
            unit=unit,
            resolution=resolution,
            source=source,
            start=begin,
            end=stop,
            truncated=len(points) >= limit,
            licence=models.Licence(**licence.as_dict()),
            points=[
                models.ReadingPoint(time=p.time, value=p.value, min=p.min, max=p.max, count=p.count)
                for p in points
            ],
        )
        return Response(body.model_dump_json(), media_type="application/json")

    @route(
        "GET",
        "/sensors/{sensor_id}/forecast",
        response_model=models.Forecast,
        responses={**_NOT_FOUND, **_UNAVAILABLE},
    )
    async def sensor_forecast(self, sensor_id: SensorId, measure: MeasureQuery) -> Response:
        """The stored forecast (a lookup); computed on the spot if none is stored."""
        link = {"Link": licence.link_header()}
        memo_key = (measure.value, sensor_id)
        memo = self._memo.get(memo_key)
        if memo is not None and time.monotonic() - memo[0] < self.settings.serve.forecast_memo_s:
            self._served.inc(tags={"kind": memo[2]})
            return Response(memo[1], media_type="application/json", headers=link)
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
            return Response(cached, media_type="application/json", headers=link)
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
        return Response(
            json.dumps({**result, "source": "computed"}),
            media_type="application/json",
            headers=link,
        )

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

    @route("POST", "/admin/reload", response_model=models.RefreshStatus, responses=_ADMIN)
    async def admin_reload(
        self,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> dict[str, Any]:
        """Drop every cached forecast and recompute all with the registry's current models."""
        self._require_admin(credentials)
        result: dict[str, Any] = await self.refresher.reload.remote()
        return result

    @route("GET", "/admin/refresh", response_model=models.RefreshStatus, responses=_ADMIN)
    async def admin_refresh_status(
        self,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> dict[str, Any]:
        """The outcome of the last scheduled forecast refresh."""
        self._require_admin(credentials)
        result: dict[str, Any] = await self.refresher.status.remote()
        return result

    @route(
        "POST",
        "/alerts/rules",
        status_code=201,
        response_model=Rule,
        responses={**_ADMIN, 409: {"model": models.Problem}, **_UNAVAILABLE},
    )
    async def alert_rule_create(
        self,
        body: RuleSpec,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> Rule:
        """A threshold rule over the aggregates or the forecasts (docs/alerts.md)."""
        self._require_admin(credentials)
        return await alert_routes.create_rule(self.alerts, body)

    @route(
        "GET",
        "/alerts/rules",
        response_model=alert_routes.RuleList,
        responses={**_ADMIN, **_UNAVAILABLE},
    )
    async def alert_rule_list(
        self,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> alert_routes.RuleList:
        self._require_admin(credentials)
        return await alert_routes.list_rules(self.alerts)

    @route(
        "GET",
        "/alerts/rules/{rule_id}",
        response_model=Rule,
        responses={**_ADMIN, **_NOT_FOUND, **_UNAVAILABLE},
    )
    async def alert_rule_get(
        self,
        rule_id: str,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> Rule:
        self._require_admin(credentials)
        return await alert_routes.get_rule(self.alerts, rule_id)

    @route(
        "DELETE",
        "/alerts/rules/{rule_id}",
        response_model=alert_routes.RuleDeleted,
        responses={**_ADMIN, **_NOT_FOUND, **_UNAVAILABLE},
    )
    async def alert_rule_delete(
        self,
        rule_id: str,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> alert_routes.RuleDeleted:
        """Remove a rule and its episodes; an open episode gets no "resolved"."""
        self._require_admin(credentials)
        return await alert_routes.delete_rule(self.alerts, rule_id)

    # -- helpers -----------------------------------------------------------------

    async def _read_sensors(self, _: str) -> SensorSnapshot:
        summaries = await asyncio.to_thread(
            latest_readings,
            self.influx,
            self.settings.influx.raw_database,
            int(self.settings.serve.sensors_lookback_s),
        )
        return SensorSnapshot(int(time.time()), summaries, sensor_models(summaries))

    def _sensor_page(
        self,
        snapshot: SensorSnapshot,
        area: geo.BBox | geo.Circle | None,
        measure: str | None,
        pg: paging.Page,
    ) -> CachedBody:
        matches = [
            sensor
            for summary, sensor in zip(snapshot.summaries, snapshot.sensors, strict=True)
            if (measure is None or measure in summary.latest)
            and (area is None or area.contains(summary.latitude, summary.longitude))
        ]
        chosen = list(pg.slice(matches))
        body = models.SensorList(
            count=len(chosen),
            total=len(matches),
            limit=pg.limit,
            offset=pg.offset,
            page=pg.number,
            generated_at=snapshot.generated_at,
            note=AQI_NOTE,
            licence=models.Licence(**licence.as_dict()),
            sensors=chosen,
        )
        return CachedBody.of(body.model_dump_json().encode())

    def _read_points(
        self, sensor_id: int, measure: str, begin: int, stop: int, resolution: str, limit: int
    ) -> tuple[Literal["raw", "aggregates"], list[Any]]:
        """The points and which database they came from: hourly and daily values are
        grouped from the 10-minute aggregates, or from raw readings where a sensor has
        no aggregates in the range (the Flink job was not running)."""
        s = self.settings.influx
        if resolution == "raw":
            return "raw", readings(
                self.influx, s.raw_database, sensor_id, measure, begin, stop, "raw", limit
            )
        if resolution == "10m":
            return "aggregates", readings(
                self.influx, s.aggregates_database, sensor_id, measure, begin, stop, "10m", limit
            )
        interval = GROUP_INTERVAL[resolution]
        points = grouped_readings(
            self.influx, s.aggregates_database, sensor_id, measure, begin, stop, interval, limit
        )
        if points:
            return "aggregates", points
        return "raw", grouped_readings(
            self.influx,
            s.raw_database,
            sensor_id,
            measure,
            begin,
            stop,
            interval,
            limit,
            from_raw=True,
        )

    async def _build_map(self, measure: str) -> CachedBody:
        s = self.settings
        started = time.monotonic()
        latest, mean_1h, mean_24h = await asyncio.gather(
            asyncio.to_thread(
                latest_located,
                self.influx,
                s.influx.raw_database,
                measure,
                int(s.serve.sensors_lookback_s),
            ),
            asyncio.to_thread(
                window_means, self.influx, s.influx.aggregates_database, measure, 3600
            ),
            self._means_24h.get(measure),
        )
        body = maplayer.layer(
            measure, latest, mean_1h, mean_24h, int(time.time()), int(s.serve.stale_after_s)
        )
        cached = await asyncio.to_thread(lambda: CachedBody.of(maplayer.render(body)))
        log.info(
            "map layer built measure=%s sensors=%d bytes=%d gzip_bytes=%d duration_s=%.3f",
            measure,
            body["count"],
            len(cached.body),
            len(cached.gzipped),
            time.monotonic() - started,
        )
        return cached

    async def _read_means_24h(self, measure: str) -> dict[int, float]:
        db = self.settings.influx.aggregates_database
        return await asyncio.to_thread(window_means, self.influx, db, measure, 86_400)

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
