"""Internal tuning constants: the numbers a maintainer may tune, all in one place.

Deployment settings (endpoints, credentials, sizes, schedules: what an operator sets
per deployment) are in :mod:`aircast.settings`, layered from its defaults, a YAML file
(the local stack's ``stack.yaml``) and ``AIRCAST_*`` variables. The constants here are
not settings: they hold for every deployment, and changing one is a code change. Each
one says why it has its value.

Plain constants, standard library only, so every layer may import this module (the
domain, the runtime shells, Flink's interpreter, the CLI). Code reads them as
``tuning.NAME`` when it runs, so a test can monkeypatch ``aircast.tuning.NAME``; the
exceptions are values fixed when a function or class is defined (a default argument, a
pydantic field, a Serve decorator).

A backoff is ``(first wait, longest wait)`` in seconds, as :class:`aircast.retry.Backoff`
takes them: the n-th wait is at most ``first * 2 ** (n - 1)``, never above the longest,
each drawn from its upper half.
"""

from __future__ import annotations

# -- Every stage: retries, dead letters, Redis -----------------------------------------

# A server's Retry-After beyond this is taken as this: a stage keeps probing, slowly.
MAX_HINT_S = 300.0
# A pathological payload is cut to this many characters in its dead letter (and the cut
# is said), so one bad message cannot make a dead letter of unbounded size.
DEAD_LETTER_MAX_PAYLOAD_CHARS = 100_000
# A restarted redis-server is back within seconds, first refusing connections, then
# answering LOADING while it reads its append-only file: retry through both rather than
# fail a scraper's snapshot. redis-py retries inside the client, per command, so its own
# Retry is kept, with the backoff of aircast.retry: waits of 0.2, 0.4, 0.8, 1.6, then 2 s
# each at most, each drawn from its upper half (equal jitter): 7.5 to 15 s in all.
REDIS_RETRY_BASE_S = 0.1  # redis-py's EqualJitterBackoff base: the first wait is twice it
REDIS_RETRY_CAP_S = 2.0  # the longest single wait
REDIS_RETRIES = 10  # per command, with the waits above

# -- Ingest ----------------------------------------------------------------------------

# One snapshot's ingest: 4 attempts, waiting 1-2, 2-4, then 4-8 s. At most 14 s of
# waiting, well inside one scraping interval (ingest.interval_s, the API's 5 minutes):
# what is still in the feed after that is taken with the next snapshot.
SNAPSHOT_ATTEMPTS = 4
SNAPSHOT_BACKOFF_S = (2.0, 8.0)
# The longest wait between two attempts of one snapshot fetch (the first wait is the
# source's backoff_s): a source that is away is asked again at least once a minute.
SOURCE_MAX_BACKOFF_S = 60.0

# -- Collect and Kafka -----------------------------------------------------------------

# A one-shot read (a collector run to the end offsets it started with, a topic scan)
# still short of those ends gives up after this long without a message, with a warning:
# a broker that stops answering ends a tool instead of hanging it.
KAFKA_STALL_S = 30.0
# The longest wait between two attempts of a failed flush (the first wait is
# influx.backoff_s): the consumer is paused meanwhile, and storage that is back is
# written to within half a minute.
COLLECT_MAX_BACKOFF_S = 30.0

# -- InfluxDB, queries, the audit ------------------------------------------------------

# The longest wait between two attempts of one InfluxDB request (the first wait is
# influx.backoff_s): an InfluxDB that is back is asked again within half a minute.
INFLUX_MAX_BACKOFF_S = 30.0
# Sensors per InfluxQL statement when fetching histories (the OR list stays short).
HISTORY_SENSORS_PER_QUERY = 200
# Reads of every sensor go in pages of about this many sensors (sensor_id mod 10**k),
# never as one answer: a page's answer is bounded on every InfluxDB version, where
# 1.x's chunked answers are the only other way to bound it and 2.x does not serve them
# (docs/influxdb.md). At 10x the network one measure has ~100,000 series, and influxd
# holds a query's every series on its heap while it answers.
SERIES_PER_PAGE = 2_000
# The audit lists its differences in full up to this many (then counts them).
AUDIT_SHOWN = 20
# The audit asks InfluxDB about at most an hour of readings at a time.
AUDIT_SLICE_S = 3_600
# Sensors whose points the audit reads one by one, per query (the OR list stays short).
AUDIT_SUSPECTS_PER_QUERY = 100
# The audit's InfluxDB timeout at least: a batch tool, and a count over every series of
# an hour may take InfluxDB a while.
AUDIT_TIMEOUT_S = 600.0
# At most about this many series per audit count query (a page of sensors: sensor_id
# mod 10**k, as the Refresher reads histories), one row per series: influxd holds a
# query's every series in memory while it answers, so one query over all of an hour's
# series at 10x the network (~100,000 a measure) grows without bound, while a page's
# cost is bounded by its size.
AUDIT_SERIES_PER_QUERY = 2_000

# -- Backfill and the archive ----------------------------------------------------------

# A backfill batch InfluxDB pushes back on is sent again after its Retry-After, this
# many times in all (the backoff applies when the server gives no hint).
BACKFILL_BACKPRESSURE_ATTEMPTS = 10
BACKFILL_BACKPRESSURE_BACKOFF_S = (1.0, 30.0)
# Lines per backfill write: the batch size InfluxDB's documentation gives as optimal.
BACKFILL_BATCH_LINES = 5_000
# Readings this close to the retention edge are treated as beyond it: the edge moves
# while a backfill runs, and InfluxDB refuses a whole batch for one point past it.
RETENTION_MARGIN_S = 3_600
# An archive request is abandoned after this long without progress (connect, read):
# a day's index and a sensor's day file are small, so a silent server is away.
ARCHIVE_HTTP_TIMEOUT_S = 30.0
# An archive file is asked for again this many times (no answer, 429, 5xx), waiting
# 0.25-0.5, 0.5-1, then 1-2 s: a brief hiccup is ridden out, an outage ends the run soon.
ARCHIVE_HTTP_RETRIES = 3
ARCHIVE_HTTP_BACKOFF_S = (0.5, 8.0)
# Archive files are hashed in blocks of this many bytes: memory stays flat for any file
# size, and each read is large enough that its per-call cost does not count.
HASH_BLOCK_BYTES = 1 << 20

# -- Alerts ----------------------------------------------------------------------------

# Bounds that keep one aggregate's evaluation cheap and a rule's state bounded.
ALERT_MAX_RULES = 1_000
ALERT_MAX_SENSORS = 1_000  # sensor ids one rule may name
ALERT_MAX_DURATION_S = 7 * 86_400  # a rule's duration_s and clear_s: a week at most
ALERT_MAX_HORIZON_S = 86_400  # a forecast rule looks at most a day ahead
# An aggregate of a window that ended longer ago than this is history, not news: a
# backlog read after a long outage (or a new consumer group starting at the topic's
# beginning) must not page anyone about last week.
ALERT_MAX_AGE_S = 6 * 3_600
# Rules are re-read this often: a rule created through the API applies within seconds.
ALERT_RULES_REFRESH_S = 2.0
# Webhook retries: 0.5 s, 1 s, 2 s, ... at most 30 s. A receiver's Retry-After is
# honoured up to the longest wait: every other alert waits behind this one.
ALERT_WEBHOOK_BACKOFF_S = (0.5, 30.0)
# Redis or Kafka away: wait and try again (never skip a batch), up to a minute apart.
ALERT_OUTAGE_BACKOFF_S = (0.5, 60.0)
# Aggregates per round of the evaluator (read, evaluate, save, deliver, commit): a
# round stays short, so new rules and due forecast checks do not wait behind a backlog.
ALERT_BATCH = 500

# -- Serve and the API -----------------------------------------------------------------

# A forecast cache miss waits at most this long for companions in its batch.
FORECAST_BATCH_WAIT_S = 0.005
# Cache misses answered together, their histories read together: fewer than
# HISTORY_SENSORS_PER_QUERY, so a batch reads each measure's histories in one statement.
FORECAST_MAX_BATCH = 64
# Forecasts the Refresher writes per Redis pipeline / InfluxDB request: about a page of
# histories (SERIES_PER_PAGE), so what is held between writes stays bounded.
REFRESH_STORE_BATCH = 2_000
# Distinct /v1/sensors queries whose bodies are kept per snapshot of the sensors: the
# cache stays bounded whatever queries clients make.
MAX_CACHED_QUERIES = 256
# The longest [from, to) of one readings request, per resolution: one answer is tens
# of thousands of points at most (a month of raw readings, a year of 10-minute
# windows, five years of hourly and a century of daily ones).
READINGS_MAX_SPAN_S = {
    "raw": 31 * 86_400,
    "10m": 366 * 86_400,
    "1h": 5 * 366 * 86_400,
    "1d": 100 * 366 * 86_400,
}
# A stale-while-revalidate value (the map layer, the sensors, the 24 h means) up to this many
# TTLs old is served while it is rebuilt; older, nobody asked for a while, and the
# caller waits for a fresh build rather than see data that old.
STALE_FACTOR = 3.0
# Level 6: within a few percent of level 9's size at a third of its time; the body
# is compressed once per rebuild, not per request.
GZIP_LEVEL = 6

# -- The pipeline driver (aircast run: Ray jobs, the Serve app) ------------------------

# A Serve deploy not RUNNING after this long has failed (and is tried again with
# SERVE_REDEPLOY_BACKOFF_S): its replicas start in worker processes the raylet starts at
# most one per core at once (see SERVE_PROXY_READY_TIMEOUT_S), so a slow start on a
# small, busy machine is not taken for a failure.
SERVE_DEPLOY_TIMEOUT_S = 300.0
# A failed job is resubmitted after up to 5 s, doubled on each failure in a row (up to
# 300 s), with jitter: a job that cannot start (bad settings) is retried slowly, not in
# a loop.
JOB_RESUBMIT_BACKOFF_S = (5.0, 300.0)
# A job that ran this long before it failed starts its backoff again from the first step.
JOB_HEALTHY_RUN_S = 600.0
# A failed Serve deploy is tried again after up to 10 s, doubling while it keeps failing
# (up to 300 s): the stack and the jobs keep running meanwhile, and the status line
# says when.
SERVE_REDEPLOY_BACKOFF_S = (10.0, 300.0)
# A replica told to stop checks for requests still in flight this often (Ray's default:
# 2 s, waited at least once even when none is): it still waits for every one of them,
# up to Serve's graceful_shutdown_timeout_s, but an idle replica stops at once.
SERVE_DRAIN_POLL_S = 0.5

# -- The local stack (aircast stack) ---------------------------------------------------

# Serve's proxy must answer its readiness check this long after the controller creates
# it (Ray's default: 5 s). That time includes starting its worker process, and the
# raylet starts at most one worker per core at once: on two cores a proxy created while
# other actors start waits its turn, fails the check three times and is killed before
# it ever ran. A proxy that is up answers at once; this only tolerates the queue.
SERVE_PROXY_READY_TIMEOUT_S = 60
# A service is started this many times before the stack gives up: on a busy machine one
# of Ray's own start-up waits (the raylet's for its agent, its registration with the
# GCS) can run out and leave a head that never comes up; a fresh start is tried.
STACK_START_ATTEMPTS = 3
# A service that exits unexpectedly is restarted, at most this many times within
# STACK_RESTART_WINDOW_S: a crash loop ends as "failed" instead of spinning.
STACK_MAX_RESTARTS = 5
STACK_RESTART_WINDOW_S = 300.0
# SIGKILL goes to a service's process group this long after SIGTERM: time for an
# orderly shutdown, and `stack down` still ends.
STACK_STOP_GRACE_S = 15.0

# -- Flink -----------------------------------------------------------------------------

# Kafka's default broker cap (transaction.max.timeout.ms) is 15 minutes; Flink's
# producer default (1 hour) would be refused by a real cluster under exactly-once.
FLINK_TRANSACTION_TIMEOUT_MS = 900_000
