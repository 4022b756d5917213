"""The PyFlink job: raw feed records → readings, 10-minute aggregates, dead letters.

Run (Flink virtualenv): ``.venv-flink/bin/python -m flink.job [--config PATH]``. It runs
on a local mini-cluster in the foreground until SIGTERM/SIGINT, then cancels the job
(its checkpoints are retained) and exits; the JVM exits with it (it watches this
process's pipe, so even ``kill -9`` leaves no JVM behind).

``--mode managed`` is how the Flink Kubernetes operator runs it (a FlinkDeployment,
application mode, the Python driver in the JobManager): the job is built without any
option the operator owns (:data:`flink.config.OPERATOR_OWNED`: restore path,
checkpoint and savepoint storage, parallelism), submitted, and the driver returns. It
never chooses a checkpoint to resume from and never cancels the job: a cancelled job is
terminal and its HA metadata, which a ``last-state`` upgrade resumes from, is deleted.
Stopping, upgrading and restoring are the operator's (kuberay/README.md, docs/flink.md).

Topology (parallelism ``flink.parallelism``; see :mod:`flink.topology`)::

    raw topic → KafkaSource → FastSplit (JVM) ─(a clean record's readings)──┐
      (watermarks per raw partition,  └─(any other message)→ SplitMessage (Python)
       from the message timestamps)        ├─(rejections)───────────→ dead-letter topic
                                           └─(readings)─────────────────────────┤
      → one row per valid value: event time, reading key, JSON, value ←────────┘
      → FirstSeen (JVM, keyed by reading key): the dedupe
          ├─ first seen ──────────────────────────────────────────────────→ readings topic
          │   └─ Windows (JVM): 10-minute tumbling windows
          │        (mean, min, max, count) ─────────────────────────────→ aggregates topic
          └─ seen again (``duplicate``); behind a fired window (``late``) ─→ dead-letter topic

The split has two lanes. ``aircast.flink.FastSplit`` (flink/java, a jar `make setup`
builds) turns a clean record (every check passes, every field in a form whose Python
reading is certain: nearly every valid real record) into its readings in the JVM, the
rows the domain's split makes byte for byte (tests/test_flink_fast_split.py); every
other message goes to the one Python operator, the split of the domain model, which
decides what is valid and why not. The dedupe
(``aircast.flink.FirstSeen``) and the windows (``aircast.flink.Windows``) are JVM
functions too, keyed by reading key and chained; the sinks and the ``duplicate`` and
``late`` letters are Flink SQL. The aggregates' JSON is laid out and the letters' SQL
generated from the domain's dataclasses (:mod:`flink.transforms`). The Python runs in
the JVM's threads (``flink.execution_mode`` "thread", PyFlink's embedded interpreter).
Why so much is in the JVM: every call between Python and the JVM (a state access, a
timer, a record handed over) costs more than the work it does, so the Python left is
one pass per record for the messages the fast lane leaves. ``make bench-flink`` compares
the job with an identity PyFlink job; its history is kept with the benchmark's runs.

**One keyed readings topic**, not one topic per measure as in the original: the key
``<sensor_id>:<measure>`` keeps each sensor's measure in order on one partition, a new
measure needs no new topic, consumer group or deployment, the collector reads one topic,
and the routing bug of the original (every per-topic filter captured the loop's last
value type) cannot exist because there is no per-measure routing code at all; the
measure is data (key and value), checked by tests.

**Duplicates**: a (sensor, measure, timestamp) seen again within ``flink.dedupe_ttl_s``
of its last sighting (``aircast.flink.FirstSeen``, one state entry per series) goes to
the dead-letter topic (``duplicate``), never to the readings or the aggregates.

**Windows**: tumbling 10-minute event-time windows per sensor and measure. The
watermarks are made in the source, per raw partition, from the message timestamps (the
ingest stamps each record with its measurement time), and the job's is the least of
them (a partition idle ``flink.idle_partition_s`` stops holding it back): a backlog read
one partition ahead of another makes nothing late. A window fires once, so
each partition's watermark trails its newest record by
``flink.watermark_out_of_orderness_s`` *plus* ``flink.allowed_lateness_s``: a window
waits for its late readings and its one aggregate is final (no early result followed by
corrections). A reading for a window that already fired is delivered as a reading and
dead-lettered ``late`` (``values=0``) for the aggregate.

**Delivery**: checkpoints every ``flink.checkpoint_interval_ms`` to
``flink.checkpoint_dir``, retained on cancel; a start resumes from the newest one.
``flink.delivery`` at-least-once (default) or exactly-once (Kafka transactions committed
on checkpoints: downstream consumers read with ``isolation_level=read_committed``).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from aircast.settings import Settings, load_settings
from flink.config import (
    JOB_NAME,
    MODES,
    Mode,
    flink_configuration,
    lane_jar,
    latest_checkpoint,
)

if TYPE_CHECKING:  # PyFlink is imported at run time only where the job runs
    from pyflink.common import JobClient
    from pyflink.datastream import StreamExecutionEnvironment

log = logging.getLogger("flink.job")

_TERMINAL = {"FINISHED", "CANCELED", "FAILED", "SUSPENDED"}


def build(
    settings: Settings, resume_from: Path | None, mode: Mode = "local"
) -> StreamExecutionEnvironment:
    """The configured execution environment with the whole topology attached."""
    from flink.topology import attach, environment

    env = environment(flink_configuration(settings, resume_from, mode))
    attach(env, settings)
    return env


def run_managed(settings: Settings) -> int:
    """Submit the job to the cluster the operator runs, and return: no restore path of
    its own (the operator starts the cluster from the checkpoint or savepoint it chose),
    no signal handler (SIGTERM ends this driver, never the job), no cancel."""
    log.info(
        "flink job starting (managed: restore path, checkpoint storage and parallelism "
        "are the operator's) raw=%s readings=%s aggregates=%s dead_letter=%s delivery=%s",
        settings.kafka.raw_topic,
        settings.kafka.readings_topic,
        settings.kafka.aggregates_topic,
        settings.kafka.dead_letter_topic,
        settings.flink.delivery,
    )
    client = build(settings, None, "managed").execute_async(JOB_NAME)
    log.info("flink job submitted job_id=%s; the operator owns it", client.get_job_id())
    return 0


def explain(settings: Settings) -> int:
    """Print the plan of the job's SQL statements (abstract syntax tree, optimized
    logical and execution plans); nothing is started or connected to."""
    from flink.topology import environment, statements

    env = environment(flink_configuration(settings, None))
    print(statements(env, settings).explain())
    return 0


class _Stop:
    """Set by SIGTERM/SIGINT; the main loop polls it between job status checks."""

    def __init__(self) -> None:
        self.signal: int | None = None

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.signal = signum


def _checkpoint_watch(checkpoint_dir: Path, last: Path | None, first: bool) -> Path | None:
    newest = latest_checkpoint(checkpoint_dir)
    if newest is not None and newest != last:
        # The first one proves recovery works; the routine ones only at DEBUG.
        log.log(logging.INFO if first else logging.DEBUG, "checkpoint completed path=%s", newest)
    return newest


def run(settings: Settings) -> int:
    """Run the job until a signal (exit 0) or a failure beyond the restart strategy (1)."""
    from py4j.protocol import Py4JError

    f = settings.flink
    f.checkpoint_dir.mkdir(parents=True, exist_ok=True)
    resume_from = latest_checkpoint(f.checkpoint_dir)
    log.info(
        "flink job starting raw=%s readings=%s aggregates=%s dead_letter=%s delivery=%s "
        "parallelism=%d resume_from=%s",
        settings.kafka.raw_topic,
        settings.kafka.readings_topic,
        settings.kafka.aggregates_topic,
        settings.kafka.dead_letter_topic,
        f.delivery,
        f.parallelism,
        resume_from or "none (committed offsets, else earliest)",
    )
    stop = _Stop()
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    env = build(settings, resume_from)
    client = env.execute_async(JOB_NAME)
    log.info("flink job submitted job_id=%s", client.get_job_id())
    status = ""
    last_checkpoint = resume_from
    checkpoints = 0
    while stop.signal is None:
        try:
            current = str(client.get_job_status().result())
        except Py4JError as exc:
            log.error("flink mini-cluster unreachable error=%s", exc)
            return 1
        if current != status:
            log.info("flink job status=%s", current)
            status = current
        if status in _TERMINAL:
            return _finished(client, status)
        newest = _checkpoint_watch(f.checkpoint_dir, last_checkpoint, first=checkpoints == 0)
        if newest != last_checkpoint:
            checkpoints += 1
            last_checkpoint = newest
        time.sleep(0.5)
    log.info("flink job stopping signal=%s", signal.Signals(stop.signal).name)
    try:
        client.cancel().result()
    except Py4JError as exc:  # the JVM may be going down with us (signal to the group)
        log.warning("flink job cancel failed error=%s", exc)
        return 0
    log.info("flink job cancelled; checkpoints kept in %s", f.checkpoint_dir)
    return 0


def _finished(client: JobClient, status: str) -> int:
    if status == "FAILED":
        try:
            client.get_job_execution_result().result()
        except Exception as exc:  # the Java failure, for the log
            log.error("flink job failed (restart attempts exhausted) error=%s", exc)
        return 1
    log.info("flink job ended status=%s", status)
    return 0


def local_jvm(settings: Settings) -> Settings:
    """Prepare this process's environment for the local mini-cluster's JVM, which PyFlink
    starts at first use; returns the settings with the job's folders made absolute."""
    f = settings.flink.model_copy(
        update={
            "checkpoint_dir": settings.flink.checkpoint_dir.resolve(),
            "jar": lane_jar(settings).resolve(),
        }
    )
    local = settings.stack.flink
    local = local.model_copy(
        update={"log_dir": local.log_dir.resolve(), "tmp_dir": local.tmp_dir.resolve()}
    )
    # The JVM's log files go to the configured folder, not into the installed package.
    local.log_dir.mkdir(parents=True, exist_ok=True)
    os.environ["FLINK_LOG_DIR"] = str(local.log_dir)
    # Temporary files too (the JVM's, and the embedded and driver Python's): what a
    # killed JVM leaves behind (43 MB a start, the planner's jar) is removed here, at
    # the next start, instead of piling up in /tmp.
    shutil.rmtree(local.tmp_dir, ignore_errors=True)
    local.tmp_dir.mkdir(parents=True)
    os.environ["TMPDIR"] = str(local.tmp_dir)
    tempfile.tempdir = None  # gettempdir() looks again
    # PyFlink starts the local JVM with JVM_ARGS first on its command line; what the
    # environment already had comes last, so it wins where options repeat (-Xmx).
    os.environ["JVM_ARGS"] = " ".join(
        arg
        for arg in (
            f"-Xmx{local.heap_mb}m",
            f"-Djava.io.tmpdir={local.tmp_dir}",
            *local.jvm_options,
            os.environ.get("JVM_ARGS", ""),
        )
        if arg
    )
    stack = settings.stack.model_copy(update={"flink": local})
    return settings.model_copy(update={"flink": f, "stack": stack})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flink.job", description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=Path, default=None, help="settings YAML file")
    parser.add_argument(
        "--explain", action="store_true", help="print the job's SQL plan and exit (no run)"
    )
    parser.add_argument(
        "--mode",
        choices=MODES,
        default="local",
        help="local: own mini-cluster, resume from the newest checkpoint, cancel on "
        "SIGTERM; managed: under the Flink Kubernetes operator, which owns restores, "
        "checkpoint storage, parallelism and stopping",
    )
    args = parser.parse_args(argv)
    settings = load_settings(args.config)
    if args.explain:
        return explain(local_jvm(settings))
    # Our own handler, not the root logger's: PyFlink's in-process Python workers
    # redirect the root logger into the JVM's log file once the job runs.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    log.addHandler(handler)
    log.setLevel(settings.log_level)
    log.propagate = False
    if args.mode == "managed":
        # The operator's JobManager runs this driver against its own JVM: no local JVM
        # to prepare, no folder of ours to empty or to work in (its root is read-only).
        return run_managed(settings)
    settings = local_jvm(settings)
    # The JVM, and in thread mode the Python functions inside it, run in the log folder:
    # the embedded interpreter imports from its working directory first, and the stack
    # starts this job in its state directory, whose "flink" folder (checkpoints, logs)
    # then shadowed this package ("No module named 'flink.functions'", a restart loop).
    os.chdir(settings.stack.flink.log_dir)
    return run(settings)


if __name__ == "__main__":
    sys.exit(main())
