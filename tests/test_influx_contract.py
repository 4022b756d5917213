"""The InfluxDB contract of docs/influxdb.md, held against the code and the real server.

The contract is read from the page itself (its two tables: the "shared" column), so the
page and the code cannot drift apart silently:

* every request the client makes, through the code's own paths (the collector's and
  backfill's writes, the forecasts' writes, the API's, training's and the status line's
  reads), goes through a small recording HTTP proxy on 127.0.0.1 to the session's real
  InfluxDB 1.6, and each endpoint, parameter, value, auth scheme and InfluxQL statement
  it carries must be shared by 1.x, 2.x and 3.x;
* every InfluxQL statement written in the code (string constants and f-strings of
  aircast/, serve/, actors/, training/, aircast_cli/) starts as a shared statement, and
  no call asks for a chunked answer;
* with ``influx.manage_databases`` false nothing but shared requests are sent, not even
  to set up, and a write to a database that does not exist fails with the reason.
"""

from __future__ import annotations

import ast
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from pydantic import SecretStr

from aircast import queries
from aircast.errors import StorageError
from aircast.influx import InfluxV1
from aircast.records import Aggregate, Reading
from aircast.settings import InfluxSettings, Settings

from .conftest import REPO, unique

DOC = REPO / "docs" / "influxdb.md"
CODE_DIRS = ("aircast", "serve", "actors", "training", "aircast_cli")
# The values the client sends, each accepted by every version (docs/influxdb.md, "Values").
SHARED_VALUES = {"precision": {"s", "ns"}, "epoch": {"s"}}


# -- the contract, from the page ----------------------------------------------------------


@dataclass(frozen=True)
class Contract:
    params: dict[str, set[str]]  # endpoint -> the shared parameters
    auth: set[str]  # shared Authorization schemes
    statements: list[str]  # shared statement heads ("SHOW TAG VALUES", "SELECT")
    refused: list[str]  # heads of statements not shared


def _rows(text: str, header: str) -> list[list[str]]:
    """The body rows of the markdown table whose header row starts with ``header``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def _head(statement: str) -> str:
    """``SHOW TAG VALUES [FROM ...] WITH KEY = ...`` -> ``SHOW TAG VALUES``."""
    words = []
    for word in statement.replace("`", "").split():
        if not re.fullmatch(r"[A-Z]+", word):
            break
        words.append(word)
    return " ".join(words)


def contract() -> Contract:
    text = DOC.read_text(encoding="utf-8")
    params: dict[str, set[str]] = {}
    auth: set[str] = set()
    for endpoint, names, v1, v2, v3, shared in _rows(text, "| endpoint | parameter |"):
        assert shared == ("yes" if (v1, v2, v3) == ("yes", "yes", "yes") else "no"), names
        if endpoint == "header":
            if shared == "yes":
                auth.add(names.strip("`").removeprefix("Authorization: "))
            continue
        path = endpoint.strip("`")
        params.setdefault(path, set())
        if shared == "yes":
            params[path] |= set(re.findall(r"`([a-z_]+)`", names))
    statements: list[str] = []
    refused: list[str] = []
    for cells in _rows(text, "| statement |"):
        statement, v1, v2, v3, shared = cells
        everywhere = all(v.startswith("yes") for v in (v1, v2, v3))
        assert shared == ("yes" if everywhere else "no"), statement
        heads = [_head(part) for part in statement.split("/")]
        (statements if shared == "yes" else refused).extend(h for h in heads if h)
    return Contract(params, auth, statements, refused)


def statement_problem(q: str, c: Contract) -> str | None:
    """Why the InfluxQL ``q`` is not in the shared column (None when it is)."""
    text = " ".join(q.split()).upper()
    if "CARDINALITY" in text:
        return f"{q!r}: a cardinality query (SHOW ... CARDINALITY is not shared)"
    shared = [h for h in c.statements if text.startswith(h)]
    refused = [
        h for h in c.refused if text.startswith(h) and len(h) > max(map(len, shared), default=0)
    ]
    if not shared or refused:
        return f"{q!r}: not a shared statement ({', '.join(refused) or 'not in the table'})"
    return None


def test_the_page_states_a_usable_contract() -> None:
    c = contract()
    assert c.params == {
        "/ping": set(),
        "/write": {"db", "rp", "precision", "u", "p"},
        "/query": {"q", "db", "rp", "epoch", "u", "p"},
    }
    assert c.auth == {"Basic"}
    assert {"SELECT", "SHOW MEASUREMENTS", "SHOW TAG VALUES"} <= set(c.statements)
    assert {"SHOW SERIES", "CREATE DATABASE", "ALTER RETENTION POLICY"} <= set(c.refused)
    text = DOC.read_text(encoding="utf-8")
    assert "`precision` `s` or `ns` and `epoch` `s`" in text  # SHARED_VALUES, stated
    # The statement check refuses what the page refuses.
    assert statement_problem('SELECT "value" FROM "P1"', c) is None
    assert statement_problem('SHOW TAG VALUES FROM "P1" WITH KEY = "sensor_id"', c) is None
    for bad in (
        'SHOW TAG VALUES CARDINALITY FROM "P1" WITH KEY = "sensor_id"',
        'SHOW SERIES FROM "P1" LIMIT 1',
        'CREATE DATABASE "x"',
        "ALTER RETENTION POLICY aircast ON x DURATION 1d REPLICATION 1 DEFAULT",
    ):
        assert statement_problem(bad, c), bad


# -- a recording proxy in front of the real server ------------------------------------------


@dataclass
class Recorded:
    method: str
    path: str
    params: dict[str, list[str]]
    auth: str | None  # the Authorization scheme


@dataclass
class Proxy:
    upstream: str
    requests: list[Recorded] = field(default_factory=list)
    url: str = ""

    def problems(self, c: Contract) -> list[str]:
        out: list[str] = []
        for r in self.requests:
            where = f"{r.method} {r.path}"
            if r.path not in c.params:
                out.append(f"{where}: not a shared endpoint")
                continue
            out += [f"{where}: parameter {p!r}" for p in set(r.params) - c.params[r.path]]
            for name, allowed in SHARED_VALUES.items():
                out += [
                    f"{where}: {name}={v!r}" for v in r.params.get(name, []) if v not in allowed
                ]
            if r.auth is not None and r.auth not in c.auth:
                out.append(f"{where}: Authorization {r.auth}")
            for q in r.params.get("q", []):
                if (problem := statement_problem(q, c)) is not None:
                    out.append(f"{where}: {problem}")
        return out

    def statements(self) -> list[str]:
        return [q for r in self.requests for q in r.params.get("q", [])]


@pytest.fixture()
def proxy(stack_settings: Settings) -> Iterator[Proxy]:
    recorder = Proxy(stack_settings.influx.url.rstrip("/"))
    upstream = httpx.Client(base_url=recorder.upstream, timeout=60)

    class Handler(BaseHTTPRequestHandler):
        def _forward(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            url = urlsplit(self.path)
            params = parse_qs(url.query, keep_blank_values=True)
            if self.headers.get("Content-Type", "").startswith("application/x-www-form-urlencoded"):
                for key, values in parse_qs(body.decode(), keep_blank_values=True).items():
                    params.setdefault(key, []).extend(values)
            auth = self.headers.get("Authorization")
            recorder.requests.append(
                Recorded(self.command, url.path, params, auth.split()[0] if auth else None)
            )
            headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
            answer = upstream.request(self.command, self.path, headers=headers, content=body)
            self.send_response(answer.status_code)
            for key, value in answer.headers.items():
                # The body is relayed decoded: its length and encoding are this answer's.
                hop = ("content-length", "content-encoding", "transfer-encoding", "connection")
                if key.lower() not in hop:
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(answer.content)))
            self.end_headers()
            self.wfile.write(answer.content)

        do_GET = do_POST = do_HEAD = _forward

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    recorder.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield recorder
    finally:
        server.shutdown()
        server.server_close()
        upstream.close()


def _through(settings: InfluxSettings, proxy: Proxy, **update: object) -> InfluxSettings:
    return settings.model_copy(update={"url": proxy.url, **update})


def _place(sensor_id: int) -> dict[str, object]:
    return dict(
        sensor_id=sensor_id,
        sensor_type="SDS011",
        location_id=sensor_id + 1000,
        latitude=48.7,
        longitude=9.3,
        country_code="DE",
        country="Germany",
        city="Stuttgart",
        measure="P1",
    )


# -- tests: what the code sends ---------------------------------------------------------------


def test_every_request_of_the_code_is_in_the_shared_column(
    stack_settings: Settings, proxy: Proxy
) -> None:
    """The database already exists (a deployment provisioned it): with manage_databases
    false the code's writes and reads, through the proxy, use only the shared API."""
    names = {
        "raw_database": unique("raw"),
        "aggregates_database": unique("agg"),
        "predictions_database": unique("pred"),
    }
    real = stack_settings.influx.model_copy(update=names)
    with InfluxV1(real) as setup:
        setup.ensure_databases()  # 1.x: as a provisioning step would (not recorded)
    settings = _through(real, proxy, manage_databases=False)
    now = 1_800_000_000 // 600 * 600
    sensor = 4242
    with InfluxV1(settings) as influx:
        assert influx.ping()
        influx.ensure_databases()  # sends nothing: provisioned outside aircast
        assert proxy.requests[-1].path == "/ping"
        reading = Reading(**_place(sensor), value=12.5, timestamp=now)  # type: ignore[arg-type]
        aggregate = Aggregate(
            **_place(sensor),  # type: ignore[arg-type]
            window_start=now - 600,
            window_end=now,
            mean=12.0,
            min=11.0,
            max=13.0,
            count=3,
        )
        # The collector's and backfill's writes (precision s), a default-policy write.
        influx.write([reading.line()], settings.raw_database, precision="s")
        influx.write([aggregate.line()], settings.aggregates_database, precision="s")
        influx.write(reading.line().encode(), settings.raw_database, precision="s")
        influx.write(
            [f"P1,sensor_id={sensor} value=1.0 {now * 10**9}"],
            settings.raw_database,
            retention_policy="aircast",
        )
        # The forecasts' write.
        forecast = queries.StoredForecast(sensor, "P1", "persistence", "v0", now, {1: 12.0})
        influx.write(
            queries.forecast_lines([forecast]), settings.predictions_database, precision="s"
        )
        # The reads of the API, the refresher, training and the status line.
        lookback = 10 * 365 * 86400
        assert queries.readings(
            influx, settings.raw_database, sensor, "P1", now - 3600, now + 1, "raw", 100
        )
        assert queries.readings(
            influx, settings.aggregates_database, sensor, "P1", now - 3600, now + 1, "10m", 100
        )
        assert sensor in queries.latest_located(influx, settings.raw_database, "P1", lookback)
        assert sensor in queries.window_means(influx, settings.aggregates_database, "P1", lookback)
        assert "P1" in queries.measures_with_aggregates(influx, settings.aggregates_database)
        queries.latest_readings(influx, settings.raw_database, lookback)
        queries.histories(
            influx, settings.aggregates_database, "P1", 6, lookback, sensor_ids=[sensor]
        )
        queries.histories(influx, settings.aggregates_database, "P1", 6, lookback)
        queries.sensor_known(influx, [settings.raw_database], sensor)
        assert influx.count("P1", settings.raw_database) >= 1
        assert settings.raw_database in influx.databases()
    endpoints = {(r.method, r.path) for r in proxy.requests}
    assert {("GET", "/ping"), ("POST", "/write"), ("POST", "/query")} <= endpoints
    assert {r.auth for r in proxy.requests if r.path != "/ping"} == {"Basic"}
    problems = proxy.problems(contract())
    assert not problems, "\n".join(sorted(set(problems)))


def test_managing_databases_is_the_only_1x_only_request(
    stack_settings: Settings, proxy: Proxy
) -> None:
    """manage_databases true (1.x): the set-up statements are the only requests outside
    the shared column, and they are exactly the 1.x database management ones."""
    names = {
        "raw_database": unique("raw"),
        "aggregates_database": unique("agg"),
        "predictions_database": unique("pred"),
    }
    settings = _through(stack_settings.influx, proxy, manage_databases=True, **names)
    with InfluxV1(settings) as influx:
        influx.ensure_databases()
        influx.ensure_databases()  # idempotent: ALTER the second time
    c = contract()
    outside = [q for q in proxy.statements() if statement_problem(q, c) is not None]
    heads = {" ".join(q.split()[:2]).upper() for q in outside}
    assert heads == {"CREATE DATABASE", "CREATE RETENTION", "ALTER RETENTION"}, outside
    assert all(
        q.startswith("SHOW RETENTION POLICIES") for q in proxy.statements() if q not in outside
    )


def test_without_managing_databases_a_missing_one_fails_with_the_reason(
    stack_settings: Settings, proxy: Proxy
) -> None:
    settings = _through(stack_settings.influx, proxy, manage_databases=False)
    missing = unique("missing")
    with InfluxV1(settings) as influx, pytest.raises(StorageError) as refused:
        influx.write(["P1,sensor_id=1 value=1.0 1700000000"], missing, precision="s")
    message = str(refused.value)
    assert refused.value.status == 404, message
    assert "not found" in message and "influx.manage_databases is false" in message
    assert [r.path for r in proxy.requests] == ["/write"]  # nothing created on the way
    with InfluxV1(settings) as influx:
        assert missing not in influx.databases()
    managed = settings.model_copy(update={"manage_databases": True})
    with InfluxV1(managed) as influx, pytest.raises(StorageError, match="ensure_databases"):
        influx.write(["P1,sensor_id=1 value=1.0 1700000000"], missing, precision="s")


def test_a_token_is_sent_as_the_token_scheme_and_basic_auth_otherwise(
    stack_settings: Settings, proxy: Proxy
) -> None:
    """The one non-shared scheme is opt-in: Authorization: Token only with influx.token
    (2.x/3.x deployments); username and password go as Basic auth."""
    with InfluxV1(_through(stack_settings.influx, proxy)) as influx:
        influx.databases()
    with_token = _through(stack_settings.influx, proxy, token=SecretStr("t0ken"))
    with InfluxV1(with_token) as influx, pytest.raises(StorageError):  # not a 1.6 scheme
        influx.databases()
    assert proxy.requests[0].auth == "Basic" and proxy.requests[-1].auth == "Token"


# -- tests: what the code says ----------------------------------------------------------------


def _statements_in(path: Path) -> Iterator[tuple[int, str]]:
    """InfluxQL statement texts in a module: string constants, and the constant start of
    f-strings, that begin with an InfluxQL verb in capitals."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    inside = {
        id(part)
        for node in ast.walk(tree)
        if isinstance(node, ast.JoinedStr)
        for part in node.values
    }
    for node in ast.walk(tree):
        if id(node) in inside:
            continue  # the f-string's own part: judged with the f-string
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            text = node.value
        elif isinstance(node, ast.JoinedStr) and node.values:
            first = node.values[0]
            if not (isinstance(first, ast.Constant) and isinstance(first.value, str)):
                continue
            text = first.value
        else:
            continue
        if re.match(r"(SELECT|SHOW|CREATE|ALTER|DROP|DELETE) [A-Z\"'(]", text):
            yield node.lineno, text


def code_problems(root: Path, c: Contract) -> list[str]:
    problems: list[str] = []
    for folder in CODE_DIRS:
        for path in sorted((root / folder).rglob("*.py")):
            where = path.relative_to(root).as_posix()
            for line, text in _statements_in(path):
                problem = statement_problem(text, c)
                # The 1.x set-up statements: the client's, behind manage_databases, and
                # the local stack's (its own influxd is always 1.x: users, databases).
                setup = where == "aircast/influx.py" and text.split()[0] in ("CREATE", "ALTER")
                setup |= where == "aircast/influx.py" and text.startswith("SHOW RETENTION")
                setup |= where.startswith("aircast_cli/stack/")
                if problem and not setup:
                    problems.append(f"{where}:{line}: {problem}")
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                if isinstance(node, ast.Call) and any(
                    k.arg in ("chunk_size", "chunked") for k in node.keywords
                ):
                    problems.append(f"{where}:{node.lineno}: asks for a chunked answer")
    return problems


def test_every_statement_the_code_writes_is_shared() -> None:
    problems = code_problems(REPO, contract())
    assert not problems, "\n".join(problems)


def test_the_code_scan_finds_what_the_contract_refuses(tmp_path: Path) -> None:
    (tmp_path / "aircast").mkdir()
    (tmp_path / "aircast" / "bad.py").write_text(
        "def f(influx, m):\n"
        "    influx.query(f'SHOW TAG VALUES CARDINALITY FROM {m} WITH KEY = \"x\"', 'db')\n"
        "    influx.query('SHOW SERIES LIMIT 1', 'db', chunk_size=10)\n"
        '    return \'SELECT "value" FROM "P1"\'\n',
        encoding="utf-8",
    )
    problems = code_problems(tmp_path, contract())
    assert len(problems) == 3, problems
    assert any("cardinality" in p for p in problems)
    assert any("SHOW SERIES" in p for p in problems)
    assert any("chunked answer" in p for p in problems)
