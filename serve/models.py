"""The API's response shapes (pydantic; they are the OpenAPI schema)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class Place(BaseModel):
    city: str
    country: str
    country_code: str


class LatestValue(BaseModel):
    value: float
    unit: str
    time: int = Field(description="epoch seconds, UTC")
    flags: list[str] = Field(
        default_factory=list,
        description="quality flags, e.g. humidity_above_70 on PM when RH > 70 % here",
    )


class IndexValue(BaseModel):
    value: int
    category: str
    pollutant: Literal["P1", "P2"] = Field(description="P1 = PM10, P2 = PM2.5")


class Aqi(BaseModel):
    caqi: IndexValue | None = Field(description="European CAQI (CiteairII hourly grid)")
    us_epa: IndexValue | None = Field(description="US EPA AQI, 2024 PM2.5 breakpoints")


class Sensor(BaseModel):
    id: int
    sensor_type: str
    location_id: int
    latitude: float | None
    longitude: float | None
    place: Place
    last_seen: int = Field(description="epoch seconds of the newest reading")
    latest: dict[str, LatestValue] = Field(description="latest reading per measure")
    aqi: Aqi
    flags: list[str]


class Licence(BaseModel):
    name: str = Field(description="SPDX identifier of the data licence")
    url: str
    attribution: str = Field(description="whom to credit when redistributing the data")


class SensorList(BaseModel):
    count: int = Field(description="sensors in this page")
    total: int = Field(description="sensors matching the query, over every page")
    limit: int = Field(description="page size")
    offset: int = Field(description="matches skipped before this page")
    page: int = Field(description="1-based page number (offset // limit + 1)")
    generated_at: int = Field(description="epoch s the sensors were read")
    note: str
    licence: Licence
    sensors: list[Sensor]


class ReadingPoint(BaseModel):
    time: int = Field(description="epoch seconds; the window's start for 10m, 1h, 1d")
    value: float = Field(
        description="the reading; for 10m the window's mean; for 1h/1d the mean of its "
        "10-minute means (a time average)"
    )
    min: float | None = None
    max: float | None = None
    count: int | None = Field(default=None, description="raw readings in the window")


class Readings(BaseModel):
    sensor_id: int
    measure: str
    unit: str
    resolution: Literal["raw", "10m", "1h", "1d"]
    source: Literal["raw", "aggregates"] = Field(
        description="the database the points come from: 1h/1d are grouped from the "
        "10-minute aggregates, or from raw readings where there are none"
    )
    start: int
    end: int
    truncated: bool = Field(description="true when the limit cut the series")
    licence: Licence
    points: list[ReadingPoint]


class ModelInfo(BaseModel):
    kind: Literal["rnn", "persistence", "seasonal_naive"]
    version: str
    trained_at: int
    skill: float = Field(description="1 - MAE_model / MAE_persistence on held-out data")
    metrics: dict[str, dict[str, float]]


class ForecastPoint(BaseModel):
    horizon_steps: int = Field(description="10-minute steps ahead")
    horizon: str
    time: int = Field(description="start of the predicted 10-minute window, epoch s")
    value: float
    low: float | None = Field(
        default=None, description="10 % quantile: the 80 % interval's lower end"
    )
    high: float | None = Field(
        default=None, description="90 % quantile: the 80 % interval's upper end"
    )


class Forecast(BaseModel):
    sensor_id: int
    measure: str
    unit: str
    issued_at: int
    based_on: int = Field(description="start of the latest 10-minute window used")
    served_by: Literal["model", "baseline"]
    model: ModelInfo
    note: str
    source: Literal["cache", "computed"]
    points: list[ForecastPoint]


class Health(BaseModel):
    status: Literal["ok", "degraded"]
    influx: bool
    redis: bool


class RefreshStatus(BaseModel):
    finished_at: int | None = None
    forecasts: int = 0
    duration_s: float | None = None
    error: str | None = None
    cleared: int | None = None
    # epoch s of the next scheduled refresh (a restarted replica resumes the schedule)
    next_at: int | None = None


class Problem(BaseModel):
    detail: str


class MapLayer(BaseModel):
    """One measure's map layer as columns: entry i of every list is sensor ``id[i]``."""

    measure: str
    label: str
    unit: str
    generated_at: int = Field(description="epoch s the layer was built")
    stale_after_s: int = Field(description="a sensor is stale when generated_at - time exceeds it")
    index: Literal["caqi"] | None = Field(description="the index aqi_1h/aqi_24h hold (PM only)")
    licence: Licence
    count: int
    id: list[int]
    lat: list[float]
    lon: list[float]
    value: list[float] = Field(description="latest reading")
    time: list[int] = Field(description="epoch s of the latest reading")
    mean_1h: list[float | None] = Field(description="mean of the 10-minute means of the last hour")
    mean_24h: list[float | None] = Field(description="mean of the 10-minute means of the last 24 h")
    aqi_1h: list[int | None] = Field(description="CAQI hourly grid of mean_1h (PM only)")
    aqi_24h: list[int | None] = Field(description="CAQI daily grid of mean_24h (PM only)")
    city: list[str]


class MeasureInfo(BaseModel):
    label: str
    unit: str


class DashboardConfig(BaseModel):
    tile_url: str | None = Field(description="XYZ tile URL template; none: offline basemap")
    tile_attribution: str
    measures: dict[str, MeasureInfo]
