"""Threshold alerts: the rule model and the per (rule, sensor) episode state machine.

Pure: no I/O, no clock of its own (``now`` is passed in). The Redis side is
:mod:`aircast.alert_store`; the loop that feeds it the 10-minute aggregates from Kafka,
checks the served forecasts and delivers what fires is ``actors.alerts``.

A rule says "<measure> <above|below> <threshold> for <duration_s>" over an area (a
bounding box) or a list of sensors. What is compared is an observation's value:

* an observed rule takes each sensor's 10-minute **mean** (one aggregate; a single
  spike within a window does not fire);
* a forecast rule (``forecast_horizon_s`` set) takes the served forecast's most extreme
  point within that horizon ("PM2.5 above 25 in the next 6 h"), one observation per
  issued forecast (``based_on`` to ``issued_at``, a 10-minute step like an aggregate).

Each (rule, sensor) is an :class:`Episode`::

    clear ──crossed for duration_s (unbroken run of windows)──▶ firing    emits "fired"
    firing ──back on the good side for clear_s──────────────▶ clear     emits "resolved"

* Once per episode: while it stays crossed nothing more is emitted (no storm); a dip
  shorter than ``clear_s`` does not end it.
* A run must be unbroken: a missing window (no aggregate) restarts a run towards firing
  or towards resolution; a firing episode never ends for lack of data, only on data.
* Idempotent: an observation ending at or before the last one taken is ignored, so
  aggregates read again after a restart (at-least-once delivery from Kafka) neither
  fire again nor move an episode backwards.

An :class:`Alert` carries a deterministic ``id`` (rule, sensor, episode start, status):
a receiver that sees one twice (at-least-once delivery) can tell.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from aircast import tuning
from aircast.measures import BY_NAME
from aircast.records import AGGREGATE_WINDOW_S, Aggregate

__all__ = [
    "WEBHOOK_FAILED",
    "WEBHOOK_REJECTED",
    "Alert",
    "BBox",
    "Engine",
    "Episode",
    "Observation",
    "Rule",
    "RuleSpec",
    "forecast_observation",
    "step",
]

# Dead-letter reasons of the alerts stage (an alert whose webhook never took it).
WEBHOOK_FAILED = "webhook_failed"  # no answer, 429 or 5xx on every attempt
WEBHOOK_REJECTED = "webhook_rejected"  # a 4xx other than 429: asking again cannot help

MAX_SENSOR_ID = 10**12  # as the API's sensor paths

_WEBHOOK = re.compile(r"^https?://[^\s/?#]+[^\s]*$")
_FROZEN = ConfigDict(frozen=True, extra="forbid")


class BBox(BaseModel):
    """An area in degrees (WGS84). ``west > east`` crosses the antimeridian."""

    model_config = _FROZEN

    south: float = Field(ge=-90, le=90)
    west: float = Field(ge=-180, le=180)
    north: float = Field(ge=-90, le=90)
    east: float = Field(ge=-180, le=180)

    @model_validator(mode="after")
    def _ordered(self) -> BBox:
        if self.south > self.north:
            raise ValueError(f"bbox south {self.south} is north of north {self.north}")
        return self

    def contains(self, latitude: float, longitude: float) -> bool:
        if not self.south <= latitude <= self.north:
            return False
        if self.west <= self.east:
            return self.west <= longitude <= self.east
        return longitude >= self.west or longitude <= self.east


def _whole_windows(name: str, value: int, most: int) -> int:
    if value < AGGREGATE_WINDOW_S or value % AGGREGATE_WINDOW_S:
        raise ValueError(
            f"{name} must be a multiple of {AGGREGATE_WINDOW_S} s (whole 10-minute "
            f"windows), at least {AGGREGATE_WINDOW_S}; got {value}"
        )
    if value > most:
        raise ValueError(f"{name} must be at most {most} s; got {value}")
    return value


class RuleSpec(BaseModel):
    """A rule as a client writes it (the create request's body)."""

    model_config = _FROZEN

    name: str = Field(min_length=1, max_length=200)
    measure: str = Field(description="a measure name: P1 (PM10), P2 (PM2.5), temperature, ...")
    op: Literal["above", "below"] = Field(
        default="above", description="fires when the value is strictly above (below) threshold"
    )
    threshold: float = Field(allow_inf_nan=False, description="in the measure's unit")
    duration_s: int = Field(
        default=AGGREGATE_WINDOW_S,
        description="how long it must stay crossed before firing; whole 10-minute windows",
    )
    clear_s: int = Field(
        default=AGGREGATE_WINDOW_S,
        description="how long it must stay back before the episode is resolved",
    )
    bbox: BBox | None = Field(default=None, description="the area (or give sensors)")
    sensors: tuple[int, ...] | None = Field(
        default=None,
        min_length=1,
        max_length=tuning.ALERT_MAX_SENSORS,
        description="sensor ids (or a bbox)",
    )
    forecast_horizon_s: int | None = Field(
        default=None,
        description="set: a forecast rule, on the served forecast's points within this "
        "many seconds ahead (served horizons: 10 min, 1 h, 6 h)",
    )
    webhook_url: str | None = Field(
        default=None,
        max_length=2_000,
        description="where fired/resolved alerts are POSTed (default: alerts.webhook_url)",
    )

    @field_validator("measure")
    @classmethod
    def _known_measure(cls, value: str) -> str:
        if value not in BY_NAME:
            raise ValueError(f"unknown measure {value!r}; known: {', '.join(BY_NAME)}")
        return value

    @field_validator("duration_s", "clear_s")
    @classmethod
    def _windows(cls, value: int, info: Any) -> int:
        return _whole_windows(info.field_name, value, tuning.ALERT_MAX_DURATION_S)

    @field_validator("forecast_horizon_s")
    @classmethod
    def _horizon(cls, value: int | None) -> int | None:
        return (
            None
            if value is None
            else _whole_windows("forecast_horizon_s", value, tuning.ALERT_MAX_HORIZON_S)
        )

    @field_validator("sensors")
    @classmethod
    def _sensor_ids(cls, value: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if value is None:
            return None
        bad = [s for s in value if not 0 <= s <= MAX_SENSOR_ID]
        if bad:
            raise ValueError(f"sensor ids are in [0, {MAX_SENSOR_ID}]; got {bad[:5]}")
        return tuple(sorted(set(value)))

    @field_validator("webhook_url")
    @classmethod
    def _webhook(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            url = httpx.URL(value)
        except (httpx.InvalidURL, ValueError, TypeError):
            url = None
        if url is None or not _WEBHOOK.match(value) or url.scheme not in ("http", "https"):
            raise ValueError(f"webhook_url must be an http(s) URL; got {value[:100]!r}")
        if not url.host:
            raise ValueError(f"webhook_url has no host; got {value[:100]!r}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> RuleSpec:
        m = BY_NAME[self.measure]
        # A bound is itself a valid reading, so "above the highest valid value" (or
        # below the lowest) could never fire.
        if self.op == "above" and not m.low <= self.threshold < m.high:
            raise ValueError(
                f"threshold {self.threshold} {m.unit} for 'above' {m.name} must be in "
                f"[{m.low}, {m.high}) (the measure's valid range)"
            )
        if self.op == "below" and not m.low < self.threshold <= m.high:
            raise ValueError(
                f"threshold {self.threshold} {m.unit} for 'below' {m.name} must be in "
                f"({m.low}, {m.high}] (the measure's valid range)"
            )
        if (self.bbox is None) == (self.sensors is None):
            raise ValueError("give exactly one of bbox (an area) or sensors (a list of ids)")
        return self


class Rule(RuleSpec):
    """A stored rule: its spec, id and creation time."""

    id: str = Field(pattern=r"^[0-9a-f]{32}$")
    created_at: int = Field(description="epoch seconds")

    @property
    def kind(self) -> Literal["observed", "forecast"]:
        return "observed" if self.forecast_horizon_s is None else "forecast"

    @property
    def unit(self) -> str:
        return BY_NAME[self.measure].unit

    def crossed(self, value: float) -> bool:
        return value > self.threshold if self.op == "above" else value < self.threshold

    def worse(self, a: float | None, b: float) -> float:
        """The more extreme of two values in the rule's direction (an episode's peak)."""
        if a is None:
            return b
        return max(a, b) if self.op == "above" else min(a, b)

    def covers(self, sensor_id: int, latitude: float | None, longitude: float | None) -> bool:
        if self.sensors is not None:
            return sensor_id in self.sensors
        if self.bbox is None or latitude is None or longitude is None:
            return False
        return self.bbox.contains(latitude, longitude)


class Alert(BaseModel):
    """A fired or resolved alert: the Kafka message value and the webhook's JSON body."""

    model_config = _FROZEN

    id: str = Field(description="rule:sensor:since:status; the same alert has the same id")
    status: Literal["fired", "resolved"]
    kind: Literal["observed", "forecast"]
    rule_id: str
    rule_name: str
    measure: str
    unit: str
    op: Literal["above", "below"]
    threshold: float
    duration_s: int
    sensor_id: int
    latitude: float | None
    longitude: float | None
    city: str
    country: str
    since: int = Field(description="epoch s: start of the first window of the episode")
    at: int = Field(description="epoch s: end of the window that decided this alert")
    value: float = Field(description="the value that decided it (mean, or forecast point)")
    peak: float = Field(description="the most extreme value of the episode so far")
    forecast_time: int | None = Field(
        default=None, description="forecast rules: the predicted window that crossed"
    )

    def to_json(self) -> bytes:
        return self.model_dump_json().encode()

    @property
    def key(self) -> bytes:
        """The Kafka key: one rule's alerts for one sensor stay in order on a partition."""
        return f"{self.rule_id}:{self.sensor_id}".encode()


@dataclass(frozen=True, slots=True)
class Observation:
    """One value of one sensor over [start, end) (a 10-minute window)."""

    sensor_id: int
    start: int
    end: int
    value: float
    latitude: float | None = None
    longitude: float | None = None
    city: str = ""
    country: str = ""
    forecast_time: int | None = None

    @classmethod
    def of_aggregate(cls, a: Aggregate) -> Observation:
        return cls(
            a.sensor_id,
            a.window_start,
            a.window_end,
            a.mean,
            a.latitude,
            a.longitude,
            a.city,
            a.country,
        )


@dataclass(frozen=True, slots=True)
class Episode:
    """The state of one (rule, sensor).

    ``run_start``: start of the unbroken run of windows on the side that moves the
    episode on (crossed while clear, back while firing); None when there is none.
    ``since``: start of the firing episode. ``last_end``: end of the latest observation
    taken (older ones are ignored)."""

    firing: bool = False
    run_start: int | None = None
    since: int | None = None
    last_end: int = 0
    peak: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "firing": self.firing,
            "run_start": self.run_start,
            "since": self.since,
            "last_end": self.last_end,
            "peak": self.peak,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Episode:
        peak = d.get("peak")
        return cls(
            firing=bool(d.get("firing", False)),
            run_start=None if d.get("run_start") is None else int(d["run_start"]),
            since=None if d.get("since") is None else int(d["since"]),
            last_end=int(d.get("last_end", 0)),
            peak=None if peak is None else float(peak),
        )


def _alert(
    rule: Rule, obs: Observation, status: Literal["fired", "resolved"], since: int, peak: float
) -> Alert:
    return Alert(
        id=f"{rule.id}:{obs.sensor_id}:{since}:{status}",
        status=status,
        kind=rule.kind,
        rule_id=rule.id,
        rule_name=rule.name,
        measure=rule.measure,
        unit=rule.unit,
        op=rule.op,
        threshold=rule.threshold,
        duration_s=rule.duration_s,
        sensor_id=obs.sensor_id,
        latitude=obs.latitude,
        longitude=obs.longitude,
        city=obs.city,
        country=obs.country,
        since=since,
        at=obs.end,
        value=obs.value,
        peak=peak,
        forecast_time=obs.forecast_time,
    )


def step(rule: Rule, episode: Episode, obs: Observation) -> tuple[Episode, Alert | None]:
    """The episode after ``obs``, and the alert it emits if any (see the module docstring)."""
    if obs.end <= episode.last_end:
        return episode, None  # taken already (a replay) or older than what was
    contiguous = obs.start == episode.last_end
    run = episode.run_start if episode.run_start is not None and contiguous else obs.start
    crossed = rule.crossed(obs.value)
    if not episode.firing:
        if not crossed:
            return Episode(last_end=obs.end), None
        peak = rule.worse(episode.peak if run == episode.run_start else None, obs.value)
        if obs.end - run >= rule.duration_s:
            fired = Episode(firing=True, since=run, last_end=obs.end, peak=peak)
            return fired, _alert(rule, obs, "fired", run, peak)
        return Episode(run_start=run, last_end=obs.end, peak=peak), None
    since = episode.since if episode.since is not None else obs.start
    peak = episode.peak if episode.peak is not None else obs.value
    if crossed:
        return replace(
            episode, run_start=None, last_end=obs.end, peak=rule.worse(peak, obs.value)
        ), None
    if obs.end - run >= rule.clear_s:
        return Episode(last_end=obs.end), _alert(rule, obs, "resolved", since, peak)
    return replace(episode, run_start=run, last_end=obs.end), None


def forecast_observation(
    rule: Rule,
    forecast: Mapping[str, Any],
    place: tuple[float, float] | None = None,
) -> Observation | None:
    """A served forecast (``aircast.forecasts`` payload) as one observation for a forecast
    rule: its most extreme point within the rule's horizon, over the forecast's own
    10-minute step (``based_on`` to ``issued_at``). None when it has no such point."""
    horizon = rule.forecast_horizon_s or 0
    try:
        points = [
            (float(p["value"]), int(p["time"]))
            for p in forecast.get("points", ())
            if int(p["horizon_steps"]) * AGGREGATE_WINDOW_S <= horizon
        ]
        start, end = int(forecast["based_on"]), int(forecast["issued_at"])
        sensor_id = int(forecast["sensor_id"])
    except (KeyError, TypeError, ValueError):
        return None
    points = [(v, t) for v, t in points if math.isfinite(v)]
    if not points:
        return None
    pick = max if rule.op == "above" else min
    value, when = pick(points)
    lat, lon = place if place is not None else (None, None)
    return Observation(sensor_id, start, end, value, lat, lon, forecast_time=when)


class Engine:
    """Every rule's episodes in memory, fed observations; records which episodes
    changed (:meth:`take_changes`) so the caller persists exactly those.

    ``load`` a rule's stored episodes before feeding it (a restart resumes where the
    store says, not from clear)."""

    def __init__(self) -> None:
        self.rules: dict[str, Rule] = {}
        self._by_measure: dict[str, list[Rule]] = {}
        self.episodes: dict[str, dict[int, Episode]] = {}
        self._changed: dict[tuple[str, int], Episode] = {}
        # Where each sensor was last seen, per measure (forecast rules over an area).
        self.places: dict[str, dict[int, tuple[float, float]]] = {}
        self.stale = 0  # aggregates passed over as older than tuning.ALERT_MAX_AGE_S

    def load(self, rule: Rule, episodes: Mapping[int, Episode]) -> None:
        self.rules[rule.id] = rule
        self.episodes[rule.id] = dict(episodes)
        self._index()

    def drop(self, rule_id: str) -> None:
        self.rules.pop(rule_id, None)
        self.episodes.pop(rule_id, None)
        self._changed = {k: v for k, v in self._changed.items() if k[0] != rule_id}
        self._index()

    def _index(self) -> None:
        by: dict[str, list[Rule]] = {}
        for r in sorted(self.rules.values(), key=lambda r: (r.created_at, r.id)):
            if r.kind == "observed":
                by.setdefault(r.measure, []).append(r)
        self._by_measure = by

    def observe(self, rule: Rule, obs: Observation) -> Alert | None:
        episodes = self.episodes.setdefault(rule.id, {})
        before = episodes.get(obs.sensor_id, Episode())
        after, alert = step(rule, before, obs)
        if after != before:
            episodes[obs.sensor_id] = after
            self._changed[(rule.id, obs.sensor_id)] = after
        return alert

    def aggregate(self, a: Aggregate, now: float) -> list[Alert]:
        """Every observed rule's verdict on one aggregate."""
        if math.isfinite(a.latitude) and math.isfinite(a.longitude):
            self.places.setdefault(a.measure, {})[a.sensor_id] = (a.latitude, a.longitude)
        if a.window_end < now - tuning.ALERT_MAX_AGE_S:
            self.stale += 1
            return []
        obs = Observation.of_aggregate(a)
        out = []
        for rule in self._by_measure.get(a.measure, ()):
            if rule.covers(a.sensor_id, a.latitude, a.longitude):
                alert = self.observe(rule, obs)
                if alert is not None:
                    out.append(alert)
        return out

    def forecast_rules(self) -> list[Rule]:
        return [r for r in self.rules.values() if r.kind == "forecast"]

    def forecast_sensors(self, rule: Rule) -> list[int]:
        """The sensors a forecast rule looks at: its list, or those last seen in its area."""
        if rule.sensors is not None:
            return list(rule.sensors)
        places = self.places.get(rule.measure, {})
        return sorted(s for s, (lat, lon) in places.items() if rule.covers(s, lat, lon))

    def forecasts(self, rule: Rule, found: Iterable[Mapping[str, Any]]) -> list[Alert]:
        """A forecast rule's verdicts on the forecasts served for its sensors."""
        out = []
        places = self.places.get(rule.measure, {})
        for forecast in found:
            obs = forecast_observation(rule, forecast)
            if obs is None:
                continue
            place = places.get(obs.sensor_id)
            if place is not None:
                obs = replace(obs, latitude=place[0], longitude=place[1])
            alert = self.observe(rule, obs)
            if alert is not None:
                out.append(alert)
        return out

    def take_changes(self) -> dict[tuple[str, int], Episode]:
        changed, self._changed = self._changed, {}
        return changed
