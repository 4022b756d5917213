"""The domain model of readings, as they flow through the pipeline.

Shapes, where they change:

1. **Feed record** (sensor.community ``static/v1/data.json``, one element)::

       {"id": 3379485919, "timestamp": "2019-04-16 14:22:52",          # UTC
        "location": {"id": 220, "latitude": "48.7400", "longitude": "9.3160",
                     "altitude": "241.9", "country": "DE", "indoor": 0},
        "sensor": {"id": 468, "sensor_type": {"name": "DHT22"}},
        "sensordatavalues": [{"value": "64.20", "value_type": "humidity"}, ...]}

   :func:`parse_feed_record` checks the envelope and returns a :class:`FeedRecord`.

2. **Raw topic** (scraper → Flink), key = sensor id: the feed record as received plus
   ``"place": {"city", "region", "country", "country_code"}`` from the geocoder.

3. **Readings topic** (Flink → collector), key = ``<sensor_id>:<measure>``: one
   :class:`Reading` per valid value, JSON.

4. **Aggregates topic** (Flink → collector), key = ``<sensor_id>:<measure>``: one
   :class:`Aggregate` per sensor, measure and 10-minute window, JSON.

5. **Dead-letter topic** (any stage): one :class:`DeadLetter` per rejected record or
   value, with its reason, detail and the raw payload.

Every rejection has a stable reason code (see :data:`REASONS`) used for counters.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, NamedTuple, TypeVar

import orjson

from aircast.errors import InvalidRecord
from aircast.measures import BY_NAME

# -- reasons ------------------------------------------------------------------------

MALFORMED = "malformed"  # not JSON, or not an object of the expected shape
MISSING_FIELD = "missing_field"  # a required field is absent or empty
BAD_TIMESTAMP = "bad_timestamp"  # timestamp unparseable
BAD_COORDINATES = "bad_coordinates"  # latitude/longitude not numbers or out of range
ZERO_COORDINATES = "zero_coordinates"  # "0","0": no location (the original skipped them)
DUPLICATE = "duplicate"  # same sensor and timestamp already taken in
INDOOR = "indoor"  # indoor sensor: not outdoor air
UNKNOWN_TYPE = "unknown_type"  # a value_type outside the measure table
NOT_NUMERIC = "not_numeric"  # value empty, not a number, NaN or infinite
OUT_OF_RANGE = "out_of_range"  # outside the measure's valid range
UNDECODABLE = "undecodable"  # a topic message that is not what the topic carries
BEYOND_RETENTION = "beyond_retention"  # older than the database's retention
LATE = "late"  # event time behind the watermark beyond the allowed lateness
STORAGE_REJECTED = "storage_rejected"  # InfluxDB refused this one point (HTTP 400)

REASONS: tuple[str, ...] = (
    MALFORMED,
    MISSING_FIELD,
    BAD_TIMESTAMP,
    BAD_COORDINATES,
    ZERO_COORDINATES,
    DUPLICATE,
    INDOOR,
    UNKNOWN_TYPE,
    NOT_NUMERIC,
    OUT_OF_RANGE,
    UNDECODABLE,
    BEYOND_RETENTION,
    LATE,
    STORAGE_REJECTED,
)

_Outcome = TypeVar("_Outcome")

# -- feed records -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FeedRecord:
    """A feed record whose envelope is usable; its values are checked later, one by one."""

    record_id: int | None
    timestamp: int  # epoch seconds, UTC
    sensor_id: int
    sensor_type: str
    location_id: int
    latitude: float
    longitude: float
    country_code: str
    indoor: bool
    values: tuple[tuple[str, str], ...]  # (value_type, value as sent)

    @property
    def dedupe_key(self) -> str:
        return f"{self.sensor_id}:{self.timestamp}"


def parse_timestamp(text: str) -> int:
    """``2019-04-16 14:22:52`` or ISO 8601 (``2019-03-01T00:00:16``), UTC → epoch s."""
    if type(text) is str:
        # A snapshot's records share a few hundred seconds: parsed once each.
        return _timestamp_of_text(text)
    return _parse_timestamp(text)


@lru_cache(maxsize=4096)
def _timestamp_of_text(text: str) -> int:
    return _parse_timestamp(text)


def _parse_timestamp(text: str) -> int:
    try:
        parsed = datetime.fromisoformat(text.replace(" ", "T", 1))
    except (ValueError, AttributeError, TypeError) as exc:
        raise InvalidRecord(BAD_TIMESTAMP, repr(text)) from exc
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp())


def format_timestamp(epoch: int) -> str:
    """The feed's own timestamp format (UTC)."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _int(obj: dict[str, Any], key: str, where: str) -> int:
    value = obj.get(key)
    if value is None or value == "":
        raise InvalidRecord(MISSING_FIELD, f"{where}.{key}")
    try:
        number = int(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidRecord(MALFORMED, f"{where}.{key}={value!r} is not an integer") from exc
    # Every consumer stores ids as signed 64-bit integers, and the readings' JSON writer
    # refuses larger ones: beyond that an id failed the Flink job's split outright.
    if not -(2**63) <= number < 2**63:
        raise InvalidRecord(MALFORMED, f"{where}.{key}={value!r} is beyond 64 bits")
    return number


def _coordinate(location: dict[str, Any], key: str, limit: float) -> float:
    raw = location.get(key)
    if raw is None or raw == "":
        raise InvalidRecord(MISSING_FIELD, f"location.{key}")
    try:
        value = float(raw)
    except (TypeError, ValueError) as exc:
        raise InvalidRecord(BAD_COORDINATES, f"location.{key}={raw!r}") from exc
    if not -limit <= value <= limit:  # also false for NaN
        raise InvalidRecord(BAD_COORDINATES, f"location.{key}={raw!r}")
    return value


def _record_id(value: Any) -> int | None:
    """The feed's record id if it is one: a non-negative integer within 64 bits (signed,
    as every consumer stores it), else None. It is informational, never a reason to
    refuse a record; and an id beyond 64 bits, or a digit ``int()`` cannot read ("²"),
    must not raise: in the Flink job's split an exception fails the job, and again
    after every restart (the message is still there)."""
    if isinstance(value, int | str) and not isinstance(value, bool):
        text = str(value)
        if text.isascii() and text.isdecimal() and int(text) < 2**63:
            return int(text)
    return None


def parse_feed_record(obj: Any) -> FeedRecord:
    """Check a feed record's envelope; raises :class:`InvalidRecord` with the reason."""
    if not isinstance(obj, dict):
        raise InvalidRecord(MALFORMED, f"record is {type(obj).__name__}, not an object")
    location = obj.get("location")
    sensor = obj.get("sensor")
    if not isinstance(location, dict):
        raise InvalidRecord(MISSING_FIELD if location is None else MALFORMED, "location")
    if not isinstance(sensor, dict):
        raise InvalidRecord(MISSING_FIELD if sensor is None else MALFORMED, "sensor")
    stamp = obj.get("timestamp")
    if not stamp:
        raise InvalidRecord(MISSING_FIELD, "timestamp")
    timestamp = parse_timestamp(stamp)
    latitude = _coordinate(location, "latitude", 90.0)
    longitude = _coordinate(location, "longitude", 180.0)
    if latitude == 0.0 and longitude == 0.0:
        raise InvalidRecord(ZERO_COORDINATES, "location 0,0")
    sensor_type = sensor.get("sensor_type")
    type_name = sensor_type.get("name") if isinstance(sensor_type, dict) else None
    if not type_name:
        raise InvalidRecord(MISSING_FIELD, "sensor.sensor_type.name")
    raw_values = obj.get("sensordatavalues")
    if not isinstance(raw_values, list) or not raw_values:
        raise InvalidRecord(MISSING_FIELD, "sensordatavalues")
    values: list[tuple[str, str]] = []
    for item in raw_values:
        if not isinstance(item, dict) or not item.get("value_type"):
            raise InvalidRecord(MALFORMED, f"sensordatavalues item {item!r}")
        value = item.get("value")
        values.append((str(item["value_type"]), "" if value is None else str(value)))
    return FeedRecord(
        record_id=_record_id(obj.get("id")),
        timestamp=timestamp,
        sensor_id=_int(sensor, "id", "sensor"),
        sensor_type=str(type_name),
        location_id=_int(location, "id", "location"),
        latitude=latitude,
        longitude=longitude,
        country_code=str(location.get("country") or "").upper(),
        indoor=str(location.get("indoor", 0)) in ("1", "true", "True"),
        values=tuple(values),
    )


def dumps_feed(obj: Any) -> bytes:
    """A feed record's compact UTF-8 JSON, as ``json.dumps(obj, ensure_ascii=False,
    separators=(",", ":"))`` writes it, in 9 µs instead of 22: orjson, as long as what it
    wrote reads back as ``obj`` (it writes NaN and infinities as ``null`` and refuses
    integers beyond 64 bits); anything else takes the standard library, as before."""
    try:
        text = orjson.dumps(obj)
        if orjson.loads(text) == obj:
            return text
    except TypeError:
        pass
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


def value_count(obj: Any) -> int:
    """How many values a (possibly broken) record stands for: the unit of accounting."""
    if isinstance(obj, dict):
        values = obj.get("sensordatavalues")
        if isinstance(values, list) and values:
            return len(values)
    return 1


# -- places -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Place:
    city: str
    region: str
    country: str  # full name
    country_code: str

    def to_dict(self) -> dict[str, str]:
        return {
            "city": self.city,
            "region": self.region,
            "country": self.country,
            "country_code": self.country_code,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Place:
        return cls(
            str(data.get("city") or ""),
            str(data.get("region") or ""),
            str(data.get("country") or ""),
            str(data.get("country_code") or ""),
        )


UNKNOWN_PLACE = Place("", "", "", "")

# -- readings -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reading:
    """One valid value of one sensor at one time, with where it was taken."""

    sensor_id: int
    sensor_type: str
    location_id: int
    latitude: float
    longitude: float
    country_code: str
    country: str
    city: str
    measure: str
    value: float
    timestamp: int  # epoch seconds, UTC
    record_id: int | None = None

    @property
    def key(self) -> str:
        return f"{self.sensor_id}:{self.measure}"

    def to_json(self) -> bytes:
        return orjson.dumps(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Reading:
        return cls(
            sensor_id=int(d["sensor_id"]),
            sensor_type=str(d["sensor_type"]),
            location_id=int(d["location_id"]),
            latitude=float(d["latitude"]),
            longitude=float(d["longitude"]),
            country_code=str(d["country_code"]),
            country=str(d["country"]),
            city=str(d["city"]),
            measure=str(d["measure"]),
            value=float(d["value"]),
            timestamp=int(d["timestamp"]),
            record_id=None if d.get("record_id") is None else int(d["record_id"]),
        )

    @classmethod
    def from_json(cls, data: bytes | str) -> Reading:
        """Decode a readings-topic message; :class:`InvalidRecord` if it is not one."""
        try:
            return cls.from_dict(orjson.loads(data))
        except (ValueError, KeyError, TypeError) as exc:
            raise InvalidRecord(UNDECODABLE, f"not a reading: {exc}") from exc

    @staticmethod
    def line_of_json(data: bytes | str) -> tuple[str, int]:
        """A readings-topic message straight to ``(line, timestamp)``: the collector's
        hot path. The same as ``Reading.from_json(data).line()`` (and the same
        :class:`InvalidRecord`), about 3 times faster: building the frozen Reading cost
        more than decoding the JSON, so the tags are checked and formatted once per
        sensor and measure instead, and only the value and time per message."""
        try:
            d = orjson.loads(data)
            timestamp = int(d["timestamp"])
            prefix = _checked_reading_prefix(
                d["measure"],
                d["sensor_id"],
                d["sensor_type"],
                d["location_id"],
                d["city"],
                d["country"],
                d["country_code"],
                d["latitude"],
                d["longitude"],
            )
            return f"{prefix}{_float(d['value'])} {timestamp}", timestamp
        except (ValueError, KeyError, TypeError):
            # Anything odd (a missing field, a string id, an unhashable tag) takes the
            # full decode: it accepts exactly what from_json accepts, or raises its error.
            reading = Reading.from_json(data)
            return reading.line(), reading.timestamp

    def line(self) -> str:
        """Line protocol for the raw database: one point per value, at its own time."""
        prefix = _reading_prefix(
            self.measure,
            self.sensor_id,
            self.sensor_type,
            self.location_id,
            self.city,
            self.country,
            self.country_code,
            self.latitude,
            self.longitude,
        )
        return f"{prefix}{_float(self.value)} {self.timestamp}"


@dataclass(frozen=True, slots=True)
class Rejection:
    """A value (or a whole record) that cannot become a reading."""

    reason: str
    detail: str
    values: int = 1  # how many values this rejection accounts for


def check_value(measure_name: str, raw: str) -> float:
    """The value as a float if it is a valid reading of ``measure_name``."""
    m = BY_NAME.get(measure_name)
    if m is None:
        raise InvalidRecord(UNKNOWN_TYPE, measure_name)
    try:
        value = float(raw)
    except (TypeError, ValueError) as exc:
        raise InvalidRecord(NOT_NUMERIC, f"{measure_name}={raw!r}") from exc
    if not math.isfinite(value):
        raise InvalidRecord(NOT_NUMERIC, f"{measure_name}={raw!r}")
    if not m.accepts(value):
        raise InvalidRecord(OUT_OF_RANGE, f"{measure_name}={value} outside [{m.low}, {m.high}]")
    return value


def split_record(raw: Any) -> list[Reading | Rejection]:
    """One raw-topic record → one outcome per value: a reading or a rejection.

    An envelope that cannot be used gives a single rejection standing for all its values.
    Indoor sensors are rejected value by value (reason ``indoor``).
    """
    return _split(raw, Reading)


class ReadingRow(NamedTuple):
    """A reading as the Flink job takes it: its key, time, value and JSON (the bytes of
    :meth:`Reading.to_json`, as text)."""

    key: str
    timestamp: int
    value: float
    json: str


def split_record_rows(raw: Any) -> list[ReadingRow | Rejection]:
    """:func:`split_record`, each reading as a :class:`ReadingRow`, made without building
    the :class:`Reading`: its JSON is a cached per-sensor-and-place prefix (the reading's
    own ``to_json`` up to its measure) and the few fields of the value. The Flink job's
    hot path; the same outcomes as :func:`split_record`, byte for byte (tested)."""
    return _split(raw, _reading_row)


def _split(raw: Any, reading: Callable[..., _Outcome]) -> list[_Outcome | Rejection]:
    try:
        record = parse_feed_record(raw)
    except InvalidRecord as exc:
        return [Rejection(exc.reason, exc.detail, value_count(raw))]
    place_data = raw.get("place") if isinstance(raw, dict) else None
    place = Place.from_dict(place_data) if isinstance(place_data, dict) else UNKNOWN_PLACE
    out: list[_Outcome | Rejection] = []
    for value_type, text in record.values:
        if record.indoor:
            out.append(Rejection(INDOOR, f"{value_type} of indoor sensor {record.sensor_id}"))
            continue
        try:
            value = check_value(value_type, text)
        except InvalidRecord as exc:
            out.append(Rejection(exc.reason, exc.detail))
            continue
        # Positional, in Reading's field order.
        out.append(
            reading(
                record.sensor_id,
                record.sensor_type,
                record.location_id,
                record.latitude,
                record.longitude,
                place.country_code or record.country_code,
                place.country,
                place.city,
                value_type,
                value,
                record.timestamp,
                record.record_id,
            )
        )
    return out


def _reading_row(
    sensor_id: int,
    sensor_type: str,
    location_id: int,
    latitude: float,
    longitude: float,
    country_code: str,
    country: str,
    city: str,
    measure: str,
    value: float,
    timestamp: int,
    record_id: int | None,
) -> ReadingRow:
    # The tail's fields are written as orjson writes them in to_json: the measure a
    # JSON string, the value orjson's float, the time and id plain integers (within 64
    # bits: parse_feed_record's), no id null.
    prefix = _reading_json_prefix(
        sensor_id, sensor_type, location_id, latitude, longitude, country_code, country, city
    )
    text = (
        f'{prefix},"measure":{_json_string(measure)},"value":{orjson.dumps(value).decode()}'
        f',"timestamp":{timestamp},"record_id":{"null" if record_id is None else record_id}}}'
    )
    return ReadingRow(f"{sensor_id}:{measure}", timestamp, value, text)


@lru_cache(maxsize=1 << 16, typed=True)
def _reading_json_prefix(
    sensor_id: int,
    sensor_type: str,
    location_id: int,
    latitude: float,
    longitude: float,
    country_code: str,
    country: str,
    city: str,
) -> str:
    # A Reading's JSON up to its measure, cut where the key is: inside a JSON string
    # every quote is escaped, so ',"measure":' appears only as the key.
    whole = Reading(
        sensor_id,
        sensor_type,
        location_id,
        latitude,
        longitude,
        country_code,
        country,
        city,
        "",
        0.0,
        0,
    ).to_json()
    return whole[: whole.index(b',"measure":')].decode()


@lru_cache(maxsize=256)
def _json_string(text: str) -> str:
    return orjson.dumps(text).decode()


# -- aggregates ---------------------------------------------------------------------

AGGREGATE_WINDOW_S = 600


@dataclass(frozen=True, slots=True)
class Aggregate:
    """Mean, min, max and count of one sensor's measure over a 10-minute window."""

    sensor_id: int
    sensor_type: str
    location_id: int
    latitude: float
    longitude: float
    country_code: str
    country: str
    city: str
    measure: str
    window_start: int  # epoch seconds, UTC, inclusive
    window_end: int  # exclusive
    mean: float
    min: float
    max: float
    count: int

    @property
    def key(self) -> str:
        return f"{self.sensor_id}:{self.measure}"

    def to_json(self) -> bytes:
        return orjson.dumps(self)

    @classmethod
    def from_json(cls, data: bytes | str) -> Aggregate:
        try:
            d = orjson.loads(data)
            return cls(
                sensor_id=int(d["sensor_id"]),
                sensor_type=str(d["sensor_type"]),
                location_id=int(d["location_id"]),
                latitude=float(d["latitude"]),
                longitude=float(d["longitude"]),
                country_code=str(d["country_code"]),
                country=str(d["country"]),
                city=str(d["city"]),
                measure=str(d["measure"]),
                window_start=int(d["window_start"]),
                window_end=int(d["window_end"]),
                mean=float(d["mean"]),
                min=float(d["min"]),
                max=float(d["max"]),
                count=int(d["count"]),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise InvalidRecord(UNDECODABLE, f"not an aggregate: {exc}") from exc

    @classmethod
    def of(cls, readings: list[Reading], window_start: int) -> Aggregate:
        """The aggregate of one sensor's readings of one measure in one window."""
        first = readings[-1]  # the latest reading carries the current location
        values = [r.value for r in readings]
        return cls(
            sensor_id=first.sensor_id,
            sensor_type=first.sensor_type,
            location_id=first.location_id,
            latitude=first.latitude,
            longitude=first.longitude,
            country_code=first.country_code,
            country=first.country,
            city=first.city,
            measure=first.measure,
            window_start=window_start,
            window_end=window_start + AGGREGATE_WINDOW_S,
            mean=sum(values) / len(values),
            min=min(values),
            max=max(values),
            count=len(values),
        )

    def line(self) -> str:
        """Line protocol for the aggregates database, at the window's start."""
        tags = _tagset(
            self.sensor_id,
            self.sensor_type,
            self.location_id,
            self.city,
            self.country,
            self.country_code,
            self.latitude,
            self.longitude,
        )
        return (
            f"{_measurement(self.measure)}{tags} count={self.count}i,max={_float(self.max)},"
            f"mean={_float(self.mean)},min={_float(self.min)} {self.window_start}"
        )


def window_start(timestamp: int, size: int = AGGREGATE_WINDOW_S) -> int:
    return timestamp - timestamp % size


# -- dead letters -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A rejected record or value, kept with its reason and the payload as received."""

    stage: str  # ingest | flink | collect | backfill
    reason: str
    detail: str
    payload: str
    key: str | None = None
    values: int = 1  # values this letter accounts for (conservation accounting)
    at: int = 0  # epoch seconds when rejected
    source: str | None = None  # topic/partition/offset or URL where it came from

    def to_json(self) -> bytes:
        return orjson.dumps(self)

    @classmethod
    def from_json(cls, data: bytes | str) -> DeadLetter:
        d = orjson.loads(data)
        return cls(**d)


# -- line protocol ------------------------------------------------------------------
# Escaping per the InfluxDB line protocol reference, tags and fields sorted; tests
# check every line against influxdb-client's Point. Tag sets are cached: a sensor's
# tags repeat every reading.

_KEY_ESCAPES = str.maketrans({",": r"\,", "=": r"\=", " ": r"\ ", "\n": r"\n"})
_MEASUREMENT_ESCAPES = str.maketrans({",": r"\,", " ": r"\ ", "\n": r"\n"})


def _measurement(name: str) -> str:
    return name.translate(_MEASUREMENT_ESCAPES)


@lru_cache(maxsize=200_000)
def _reading_prefix(
    measure: str,
    sensor_id: int,
    sensor_type: str,
    location_id: int,
    city: str,
    country: str,
    country_code: str,
    latitude: float,
    longitude: float,
) -> str:
    """A reading's line up to its value: the same for every reading of one sensor and
    measure, so built once (the collector writes every reading through here)."""
    tags = _tagset(
        sensor_id, sensor_type, location_id, city, country, country_code, latitude, longitude
    )
    return f"{_measurement(measure)}{tags} value="


# typed: 1 and 1.0 (or "1") are different keys, so a hit was converted like the message.
@lru_cache(maxsize=200_000, typed=True)
def _checked_reading_prefix(
    measure: Any,
    sensor_id: Any,
    sensor_type: Any,
    location_id: Any,
    city: Any,
    country: Any,
    country_code: Any,
    latitude: Any,
    longitude: Any,
) -> str:
    """:func:`_reading_prefix` of a message's raw fields, converted as
    :meth:`Reading.from_dict` converts them (ValueError/TypeError when it would fail)."""
    return _reading_prefix(
        str(measure),
        int(sensor_id),
        str(sensor_type),
        int(location_id),
        str(city),
        str(country),
        str(country_code),
        float(latitude),
        float(longitude),
    )


@lru_cache(maxsize=200_000)
def _tagset(
    sensor_id: int,
    sensor_type: str,
    location_id: int,
    city: str,
    country: str,
    country_code: str,
    latitude: float,
    longitude: float,
) -> str:
    # The coordinates are tags, not fields: a location's are fixed (a sensor moved gets
    # a new location_id), so they add no series, while as two more fields they would
    # triple the keys InfluxDB stores and snapshots (one per series and field), and
    # with them influxd's CPU and memory.
    tags = (
        ("city", city),
        ("country", country),
        ("country_code", country_code),
        ("lat", str(float(latitude))),
        ("location_id", str(location_id)),
        ("lon", str(float(longitude))),
        ("sensor_id", str(sensor_id)),
        ("sensor_type", sensor_type),
    )
    # Sorted keys (as Influx stores them); empty tag values are omitted (not allowed).
    return "".join(f",{k}={v.translate(_KEY_ESCAPES)}" for k, v in tags if v != "")


def _float(value: float) -> str:
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text
