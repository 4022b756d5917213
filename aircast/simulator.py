"""A synthetic sensor.community network, for offline demos, tests and load.

N sensors at real city coordinates (jittered a few kilometres), each of a real sensor
type, produce readings every ~145 s (as the real network does) with daily cycles and
weather-like regional patterns per measure. Realistic faults are injected at fixed
rates: missing and non-numeric values, particulate spikes beyond the sensor's range,
zero coordinates, indoor sensors and duplicate records. An :class:`Excursion` holds one
sensor's measure at a chosen level for a while (a smog episode next to it), so a test
can drive an alert rule over its threshold and back.

Deterministic: the snapshot of a given 5-minute window depends only on the seed, the
number of sensors and the window, so a test can compute what a server returned.

:class:`SimulatorServer` serves ``/static/v1/data.json`` (the live API's path) on
127.0.0.1, so the live code path runs end to end offline. Each response is the
current window's snapshot; ``ETag``/``If-None-Match`` let clients skip a repeat.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import random
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

import orjson

from aircast.records import format_timestamp

log = logging.getLogger(__name__)

SNAPSHOT_WINDOW_S = 300
READING_INTERVAL_S = 145
FEED_PATH = "/static/v1/data.json"

# (city, country code, latitude, longitude): real coordinates of cities with many sensors.
CITIES: tuple[tuple[str, str, float, float], ...] = (
    ("Stuttgart", "DE", 48.7758, 9.1829),
    ("Berlin", "DE", 52.5200, 13.4050),
    ("Hamburg", "DE", 53.5511, 9.9937),
    ("Munich", "DE", 48.1351, 11.5820),
    ("Cologne", "DE", 50.9375, 6.9603),
    ("Frankfurt am Main", "DE", 50.1109, 8.6821),
    ("Leipzig", "DE", 51.3397, 12.3731),
    ("Dresden", "DE", 51.0504, 13.7373),
    ("Hanover", "DE", 52.3759, 9.7320),
    ("Nuremberg", "DE", 49.4521, 11.0767),
    ("Amsterdam", "NL", 52.3676, 4.9041),
    ("Rotterdam", "NL", 51.9244, 4.4777),
    ("Utrecht", "NL", 52.0907, 5.1214),
    ("Antwerp", "BE", 51.2194, 4.4025),
    ("Brussels", "BE", 50.8503, 4.3517),
    ("Paris", "FR", 48.8566, 2.3522),
    ("Lyon", "FR", 45.7640, 4.8357),
    ("Marseille", "FR", 43.2965, 5.3698),
    ("London", "GB", 51.5074, -0.1278),
    ("Aberdeen", "GB", 57.1497, -2.0943),
    ("Manchester", "GB", 53.4808, -2.2426),
    ("Dublin", "IE", 53.3498, -6.2603),
    ("Madrid", "ES", 40.4168, -3.7038),
    ("Barcelona", "ES", 41.3874, 2.1686),
    ("Lisbon", "PT", 38.7223, -9.1393),
    ("Milan", "IT", 45.4642, 9.1900),
    ("Rome", "IT", 41.9028, 12.4964),
    ("Vienna", "AT", 48.2082, 16.3738),
    ("Graz", "AT", 47.0707, 15.4395),
    ("Zurich", "CH", 47.3769, 8.5417),
    ("Prague", "CZ", 50.0755, 14.4378),
    ("Brno", "CZ", 49.1951, 16.6068),
    ("Warsaw", "PL", 52.2297, 21.0122),
    ("Krakow", "PL", 50.0647, 19.9450),
    ("Wroclaw", "PL", 51.1079, 17.0385),
    ("Budapest", "HU", 47.4979, 19.0402),
    ("Bratislava", "SK", 48.1486, 17.1077),
    ("Ljubljana", "SI", 46.0569, 14.5058),
    ("Zagreb", "HR", 45.8150, 15.9819),
    ("Belgrade", "RS", 44.7866, 20.4489),
    ("Sofia", "BG", 42.6977, 23.3219),
    ("Plovdiv", "BG", 42.1354, 24.7453),
    ("Bucharest", "RO", 44.4268, 26.1025),
    ("Athens", "GR", 37.9838, 23.7275),
    ("Thessaloniki", "GR", 40.6401, 22.9444),
    ("Kyiv", "UA", 50.4501, 30.5234),
    ("Kharkiv", "UA", 49.9935, 36.2304),
    ("Minsk", "BY", 53.9006, 27.5590),
    ("Vilnius", "LT", 54.6872, 25.2797),
    ("Riga", "LV", 56.9496, 24.1052),
    ("Tallinn", "EE", 59.4370, 24.7536),
    ("Helsinki", "FI", 60.1699, 24.9384),
    ("Stockholm", "SE", 59.3293, 18.0686),
    ("Oslo", "NO", 59.9139, 10.7522),
    ("Copenhagen", "DK", 55.6761, 12.5683),
    ("Moscow", "RU", 55.7558, 37.6173),
    ("Istanbul", "TR", 41.0082, 28.9784),
    ("Luxembourg", "LU", 49.6116, 6.1319),
)

# sensor type → the value types it reports (as in the real feed)
SENSOR_TYPES: tuple[tuple[str, tuple[str, ...], float], ...] = (
    ("SDS011", ("P1", "P2"), 0.50),
    ("DHT22", ("temperature", "humidity"), 0.30),
    ("BME280", ("temperature", "humidity", "pressure", "pressure_at_sealevel"), 0.15),
    ("DNMS (Laerm)", ("noise_LAeq", "noise_LA_min", "noise_LA_max"), 0.05),
)


@dataclass(frozen=True)
class Faults:
    """Rates of injected faults, per record (or per value for value faults)."""

    missing_value: float = 0.01  # empty value string
    not_numeric: float = 0.003  # "nan" / garbage
    spike: float = 0.005  # a particulate value beyond the SDS011 range
    duplicate: float = 0.01  # the same record twice in a snapshot
    zero_coordinates: float = 0.004  # sensors without a location ("0","0")
    indoor: float = 0.02  # sensors flagged indoor


NO_FAULTS = Faults(0, 0, 0, 0, 0, 0)


@dataclass(frozen=True)
class Excursion:
    """One sensor's ``value_type`` held near ``level`` for readings in [start, end)
    (epoch seconds); the rest of its values, and every other sensor, are untouched."""

    sensor_id: int
    value_type: str
    start: int
    end: int
    level: float

    def __post_init__(self) -> None:
        if self.end <= self.start:
            raise ValueError(f"an excursion needs start < end, got {self.start}..{self.end}")


@dataclass(frozen=True)
class SimSensor:
    sensor_id: int
    location_id: int
    sensor_type: str
    value_types: tuple[str, ...]
    latitude: float
    longitude: float
    country: str
    altitude: float
    indoor: bool
    zero_coordinates: bool
    phase_s: int  # offset of its reading schedule


def _rng(*parts: object) -> random.Random:
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return random.Random(int.from_bytes(digest, "big"))


class Network:
    """A deterministic synthetic network."""

    def __init__(
        self,
        sensors: int,
        seed: int = 42,
        faults: Faults | None = None,
        excursions: tuple[Excursion, ...] = (),
    ) -> None:
        self.seed = seed
        self.faults = faults if faults is not None else Faults()
        self._excursions: dict[tuple[int, str], list[Excursion]] = {}
        for e in excursions:
            self._excursions.setdefault((e.sensor_id, e.value_type), []).append(e)
        self._anchors: dict[tuple[tuple[int, int], int], float] = {}
        rng = random.Random(seed)
        types = [t for t, _, _ in SENSOR_TYPES]
        weights = [w for _, _, w in SENSOR_TYPES]
        values = {t: v for t, v, _ in SENSOR_TYPES}
        self.sensors: list[SimSensor] = []
        for i in range(sensors):
            _city, country, lat, lon = CITIES[rng.randrange(len(CITIES))]
            kind = rng.choices(types, weights)[0]
            self.sensors.append(
                SimSensor(
                    sensor_id=100_000 + i,
                    location_id=500_000 + i,
                    sensor_type=kind,
                    value_types=values[kind],
                    latitude=round(lat + rng.gauss(0, 0.05), 4),
                    longitude=round(lon + rng.gauss(0, 0.08), 4),
                    country=country,
                    altitude=round(max(0.0, rng.gauss(150, 120)), 1),
                    indoor=rng.random() < self.faults.indoor,
                    zero_coordinates=rng.random() < self.faults.zero_coordinates,
                    phase_s=rng.randrange(READING_INTERVAL_S),
                )
            )

    # -- physics-ish ---------------------------------------------------------------

    def _anchor(self, cell: tuple[int, int], block: int) -> float:
        key = (cell, block)
        value = self._anchors.get(key)
        if value is None:
            value = self._anchors[key] = _rng(self.seed, "w", cell, block).gauss(0, 1)
        return value

    def _regional(self, sensor: SimSensor, hour_index: int) -> float:
        """A weather-like regional factor: smooth in time, shared by nearby sensors."""
        cell = (round(sensor.latitude), round(sensor.longitude))
        a = self._anchor(cell, hour_index // 6)
        b = self._anchor(cell, hour_index // 6 + 1)
        frac = (hour_index % 6) / 6
        return a * (1 - frac) + b * frac

    def value(self, sensor: SimSensor, value_type: str, t: int, noise: float = 0.0) -> float:
        """The true value (``noise`` is the sensor's standard-normal measurement noise)."""
        if self._excursions:
            for e in self._excursions.get((sensor.sensor_id, value_type), ()):
                if e.start <= t < e.end:
                    return round(e.level + 0.5 * noise, 2)
        local_hour = ((t / 3600.0) + sensor.longitude / 15.0) % 24
        day = math.sin(2 * math.pi * (local_hour - 9) / 24)  # peaks ~15:00 local
        weather = self._regional(sensor, t // 3600)
        season = 10.0 - 0.25 * abs(sensor.latitude - 45)
        if value_type == "temperature":
            return round(season + 6 * day + 3 * weather + 0.3 * noise, 2)
        if value_type == "humidity":
            return round(min(100.0, max(5.0, 70 - 18 * day + 8 * weather + 2 * noise)), 2)
        if value_type in ("P1", "P2"):
            rush = math.exp(-((local_hour - 8) ** 2) / 4) + math.exp(-((local_hour - 19) ** 2) / 6)
            pm25 = max(0.5, 9 + 8 * rush + 6 * max(weather, -1) + 1.5 * noise)
            return round(pm25 * (1.6 if value_type == "P1" else 1.0), 2)
        if value_type == "pressure_at_sealevel":
            return round(101_325 + 900 * weather + 20 * noise, 2)
        if value_type == "pressure":
            sealevel = 101_325 + 900 * weather + 20 * noise
            return round(sealevel * math.exp(-sensor.altitude / 8434), 2)
        if value_type == "noise_LAeq":
            return round(52 + 8 * day + 2 * noise, 2)
        if value_type == "noise_LA_min":
            return round(38 + 6 * day + 2 * noise, 2)
        if value_type == "noise_LA_max":
            return round(70 + 10 * day + 4 * noise, 2)
        raise ValueError(value_type)

    # -- records -------------------------------------------------------------------

    def reading_times(self, sensor: SimSensor, start: int, end: int) -> list[int]:
        """The sensor's reading times in [start, end)."""
        first = start + (sensor.phase_s - start) % READING_INTERVAL_S
        return list(range(first, end, READING_INTERVAL_S))

    def record(self, sensor: SimSensor, t: int) -> dict[str, Any]:
        rng = _rng(self.seed, "f", sensor.sensor_id, t)
        values = []
        for n, value_type in enumerate(sensor.value_types):
            text = f"{self.value(sensor, value_type, t, rng.gauss(0, 1)):.2f}"
            roll = rng.random()
            f = self.faults
            if roll < f.missing_value:
                text = ""
            elif roll < f.missing_value + f.not_numeric:
                text = rng.choice(["nan", "NaN", "err", "-"])
            elif value_type in ("P1", "P2") and roll < f.missing_value + f.not_numeric + f.spike:
                text = f"{rng.uniform(1000, 2000):.2f}"
            values.append(
                {
                    "id": sensor.sensor_id * 10_000_000 + (t % 1_000_000) * 10 + n,
                    "value": text,
                    "value_type": value_type,
                }
            )
        lat, lon = (
            ("0", "0")
            if sensor.zero_coordinates
            else (f"{sensor.latitude:.4f}", f"{sensor.longitude:.4f}")
        )
        return {
            "id": _record_id(sensor, t),
            "sampling_rate": None,
            "timestamp": format_timestamp(t),
            "location": {
                "id": sensor.location_id,
                "latitude": lat,
                "longitude": lon,
                "altitude": f"{sensor.altitude:.1f}",
                "country": sensor.country,
                "exact_location": 0,
                "indoor": 1 if sensor.indoor else 0,
            },
            "sensor": {
                "id": sensor.sensor_id,
                "pin": "1",
                "sensor_type": {"id": 14, "name": sensor.sensor_type, "manufacturer": "aircast"},
            },
            "sensordatavalues": values,
        }

    def snapshot(self, window_end: int, window_s: int = SNAPSHOT_WINDOW_S) -> list[dict[str, Any]]:
        """Every reading of the window ``[window_end - window_s, window_end)``, like the
        live API's last-5-minutes file (duplicates included, by fault rate)."""
        out: list[dict[str, Any]] = []
        for sensor, t, twice in self._window(window_end, window_s):
            rec = self.record(sensor, t)
            out.append(rec)
            if twice:
                out.append(rec)
        return out

    def snapshot_body(self, window_end: int, previous: Body | None = None) -> Body:
        """:meth:`snapshot` as the feed's JSON body, reusing ``previous`` (the last
        body): consecutive files overlap (a 5-minute window refreshed every minute or
        less), so only the new readings are built; the rest are copied out of the
        previous body, where its index says they are."""
        # One buffer, each record written into it as made: records kept as separate
        # bytes objects until joined are small allocations on this thread's malloc
        # arena, freed out of order, and the process keeps that memory (at 10x the
        # network, 420,000 records a file, gigabytes of it); one buffer is freed whole,
        # and is faster to build too.
        out = io.BytesIO()
        out.write(b"[")
        spans: dict[int, int] = {}
        old = memoryview(previous.data) if previous is not None else None
        sep = b""
        for sensor, t, twice in self._window(window_end, SNAPSHOT_WINDOW_S):
            key = _piece_key(sensor.sensor_id, t)
            span = previous.spans.get(key) if previous is not None else None
            piece: bytes | memoryview
            if span is None or old is None:
                piece = orjson.dumps(self.record(sensor, t))
            else:
                start = span >> _SPAN_BITS
                piece = old[start : start + (span & _SPAN_MASK)]
            out.write(sep)
            sep = b","
            spans[key] = out.tell() << _SPAN_BITS | len(piece)
            out.write(piece)
            if twice:
                out.write(b",")
                out.write(piece)
        out.write(b"]")
        return Body(out.getvalue(), spans)

    def _window(self, window_end: int, window_s: int) -> Iterator[tuple[SimSensor, int, bool]]:
        """(sensor, reading time, whether the file repeats it) for every reading."""
        start = window_end - window_s
        duplicates = self.faults.duplicate * 10_000
        for sensor in self.sensors:
            for t in self.reading_times(sensor, start, window_end):
                # Derived from the record's id: no second generator per record.
                twice = (_record_id(sensor, t) * 2654435761 + self.seed) % 10_000 < duplicates
                yield sensor, t, twice


def _record_id(sensor: SimSensor, t: int) -> int:
    return sensor.sensor_id * 1_000_000 + t % 1_000_000


# A record's place in a body: its offset and length packed in one int (a record's JSON
# is well under 1 MiB), keyed by its sensor and time packed likewise (no tuples: 420,000
# of them a file at 10x).
_SPAN_BITS = 20
_SPAN_MASK = (1 << _SPAN_BITS) - 1


def _piece_key(sensor_id: int, t: int) -> int:
    return sensor_id << 32 | t


@dataclass(frozen=True)
class Body:
    """A feed file's JSON and where each record's JSON is in it (by sensor and time;
    a record the file repeats is indexed at its first place)."""

    data: bytes
    spans: dict[int, int]

    def times(self) -> set[tuple[int, int]]:
        """The (sensor id, time) of every record in the body."""
        return {(key >> 32, key & 0xFFFFFFFF) for key in self.spans}

    def piece(self, sensor_id: int, t: int) -> bytes:
        span = self.spans[_piece_key(sensor_id, t)]
        start = span >> _SPAN_BITS
        return self.data[start : start + (span & _SPAN_MASK)]


def current_window_end(now: float | None = None, refresh_s: int = SNAPSHOT_WINDOW_S) -> int:
    """End of the window the feed shows at ``now``: a new file every ``refresh_s``."""
    t = int(time.time() if now is None else now)
    return t - t % refresh_s


class _Handler(BaseHTTPRequestHandler):
    server: _SimHTTPServer

    def do_GET(self) -> None:
        parsed = urlparse(self.path)
        if parsed.path != FEED_PATH:
            self.send_error(404, "only " + FEED_PATH)
            return
        query = parse_qs(parsed.query)
        window = int(query["at"][0]) if "at" in query else self.server.clock()
        etag = f'"{self.server.network.seed}-{len(self.server.network.sensors)}-{window}"'
        if self.headers.get("If-None-Match") == etag:
            self.send_response(304)
            self.send_header("ETag", etag)
            self.end_headers()
            return
        body = self.server.body(window)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("ETag", etag)
        self.send_header("X-Aircast-Window-End", str(window))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("simulator %s", format % args)


class _SimHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], network: Network, clock: Any) -> None:
        super().__init__(address, _Handler)
        self.network = network
        self.clock = clock
        self._cache: tuple[int, Body] | None = None
        self._lock = threading.Lock()
        # Every body is built on this one thread: built on whichever request's thread
        # asked first, a file's records would come from that thread's malloc arena and
        # be freed later from another's, and the allocator keeps memory freed that way
        # (see also Network.snapshot_body, which writes each file into one buffer).
        self._builder = ThreadPoolExecutor(1, thread_name_prefix="aircast-simulator-body")

    def body(self, window: int) -> bytes:
        # Built once per window (concurrent requests wait for it), from the previous
        # window's body: at 10x the network (200,000 sensors, 420,000 records a file)
        # building every file from scratch takes longer than a client's timeout.
        with self._lock:
            if self._cache is None or self._cache[0] != window:
                previous = self._cache[1] if self._cache is not None else None
                self._cache = None  # the previous body goes once the new one is built
                built = self._builder.submit(self.network.snapshot_body, window, previous)
                self._cache = (window, built.result())
            return self._cache[1].data

    def server_close(self) -> None:
        super().server_close()
        self._builder.shutdown(wait=False, cancel_futures=True)


class SimulatorServer:
    """Serves the network's current snapshot at the live API's path on 127.0.0.1."""

    def __init__(
        self, network: Network, port: int = 0, host: str = "127.0.0.1", clock: Any = None
    ) -> None:
        self._server = _SimHTTPServer((host, port), network, clock or current_window_end)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{FEED_PATH}"

    def start(self) -> SimulatorServer:
        self._thread = threading.Thread(
            target=self._server.serve_forever, daemon=True, name="aircast-simulator"
        )
        self._thread.start()
        log.info("simulator serving url=%s sensors=%d", self.url, len(self._server.network.sensors))
        return self

    def serve_forever(self) -> None:
        self._server.serve_forever()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> SimulatorServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
