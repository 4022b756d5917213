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


class SensorList(BaseModel):
    count: int
    generated_at: int
    note: str
    sensors: list[Sensor]


class ReadingPoint(BaseModel):
    time: int = Field(description="epoch seconds; window start for 10m")
    value: float = Field(description="the reading, or the window mean for 10m")
    min: float | None = None
    max: float | None = None
    count: int | None = None


class Readings(BaseModel):
    sensor_id: int
    measure: str
    unit: str
    resolution: Literal["raw", "10m"]
    start: int
    end: int
    truncated: bool = Field(description="true when the limit cut the series")
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
