"""The Flink job's two modes, against the real PyFlink of the Flink virtualenv.

* local: the job owns its mini-cluster, so it sets the parallelism, checkpoint storage and
  the restore path (the newest retained checkpoint) itself;
* managed (``--mode managed``, what the FlinkDeployment runs): the Flink Kubernetes
  operator owns those. In application mode Flink applies the job's own configuration
  over the cluster's, so anything the job set would override what the operator chose:
  the tests merge the two the same way, in PyFlink (the cluster's configuration taken
  from the real FlinkDeployment manifest plus what the operator adds: the parallelism of
  ``spec.job`` and the restore path of an upgrade), and read back what the job would
  run with.

Configuration only (an environment, no job), except one slow test that submits the job
in managed mode and checks the driver returns without cancelling it or touching the
local folders.
"""

from __future__ import annotations

import json
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from aircast.errors import ConfigError
from aircast.settings import FlinkSettings, Settings
from flink.config import OPERATOR_OWNED, flink_configuration

from .conftest import REPO

pytestmark = pytest.mark.flink

FLINK_PYTHON = REPO / ".venv-flink" / "bin" / "python"
DEPLOYMENT = REPO / "kuberay" / "base" / "flink" / "flinkdeployment.yaml"
# What the operator adds to the cluster's configuration for a last-state upgrade.
OPERATOR_RESTORE = "file:///flink-data/ha/aircast-flink/completedCheckpoint-42"


def _flink(script: str, *args: str, timeout: float = 240) -> Any:
    """Run ``script`` in the Flink virtualenv; its last stdout line, as JSON."""
    if not FLINK_PYTHON.is_file():
        pytest.fail(f"{FLINK_PYTHON} missing: run `make setup`")
    done = subprocess.run(
        [str(FLINK_PYTHON), "-c", textwrap.dedent(script), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


# Builds the job's environment as Flink does in application mode: the cluster's
# configuration first, the job's over it; prints what the job would run with.
_MERGE = """
import json, sys
from pathlib import Path
from pyflink.common import Configuration
from pyflink.datastream import StreamExecutionEnvironment
from aircast.settings import FlinkSettings, Settings
from flink.config import flink_configuration

cluster, runs = json.loads(sys.argv[1]), json.loads(sys.argv[2])
settings = Settings(flink={"parallelism": 5, "checkpoint_dir": "/job/own/checkpoints"})
out = {}
for mode, resume in runs.items():
    conf = Configuration()
    for key, value in cluster.items():
        conf.set_string(key, value)
    env = StreamExecutionEnvironment.get_execution_environment(conf)
    job = Configuration()
    own = flink_configuration(settings, Path(resume) if resume else None, mode)
    for key, value in own.items():
        job.set_string(key, value)
    env.configure(job)
    j_conf = env._j_stream_execution_environment.getConfiguration()
    checkpoints = env.get_checkpoint_config()
    out[mode] = {
        "parallelism": env.get_parallelism(),
        "interval_ms": checkpoints.get_checkpoint_interval(),
        "mode": str(checkpoints.get_checkpointing_mode()),
        "conf": {str(k): str(v) for k, v in dict(j_conf.toMap()).items()},
    }
print(json.dumps(out))
"""


def _cluster_configuration() -> dict[str, str]:
    """The FlinkDeployment's flinkConfiguration, and what the operator adds to it."""
    spec = yaml.safe_load(DEPLOYMENT.read_text(encoding="utf-8"))["spec"]
    conf = {str(k): str(v) for k, v in spec["flinkConfiguration"].items()}
    conf["parallelism.default"] = str(spec["job"]["parallelism"])
    conf["execution.state-recovery.path"] = OPERATOR_RESTORE
    return conf


@pytest.fixture(scope="module")
def merged(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    cluster = _cluster_configuration()
    checkpoint = tmp_path_factory.mktemp("chk") / "job" / "chk-7"
    runs = {"managed": "", "local": str(checkpoint)}
    found = _flink(_MERGE, json.dumps(cluster), json.dumps(runs))
    return {
        mode: run | {"checkpoint": checkpoint.as_uri(), "cluster": cluster}
        for mode, run in found.items()
    }


def test_managed_mode_runs_with_what_the_operator_chose(merged: dict[str, Any]) -> None:
    run, cluster = merged["managed"], merged["managed"]["cluster"]
    conf = run["conf"]
    assert run["parallelism"] == int(cluster["parallelism.default"]) == 2
    assert conf["execution.state-recovery.path"] == OPERATOR_RESTORE
    assert "execution.state-recovery.ignore-unclaimed-state" not in conf
    for key in (
        "execution.checkpointing.dir",
        "execution.checkpointing.savepoint-dir",
        "execution.checkpointing.externalized-checkpoint-retention",
        "execution.checkpointing.num-retained",
    ):
        assert conf[key] == cluster[key], key
    # The job's own semantics still hold: its checkpoint interval and consistency.
    settings = Settings().flink
    assert run["interval_ms"] == settings.checkpoint_interval_ms
    assert run["mode"] == "CheckpointingMode.AT_LEAST_ONCE"


def test_local_mode_keeps_choosing_for_itself(merged: dict[str, Any]) -> None:
    """The local stack's behaviour, unchanged: its own parallelism, checkpoint folder and
    restore path (which is exactly what would override the operator's on Kubernetes)."""
    run = merged["local"]
    conf = run["conf"]
    assert run["parallelism"] == 5
    assert conf["execution.checkpointing.dir"] == "file:///job/own/checkpoints"
    assert conf["execution.state-recovery.path"] == merged["local"]["checkpoint"]
    assert conf["execution.state-recovery.ignore-unclaimed-state"] == "true"
    assert conf["execution.checkpointing.externalized-checkpoint-retention"] == (
        "RETAIN_ON_CANCELLATION"
    )


def test_managed_configuration_sets_nothing_the_operator_owns(tmp_path: Path) -> None:
    """Plain data, both modes: managed leaves out every operator-owned key, refuses a
    restore path of its own and operator-owned keys in flink.options; local sets them."""
    settings = Settings(flink=FlinkSettings(delivery="exactly-once", options={"a.b": "c"}))
    managed = flink_configuration(settings, None, "managed")
    assert not set(managed) & set(OPERATOR_OWNED)
    assert managed["execution.checkpointing.mode"] == "EXACTLY_ONCE"
    assert managed["a.b"] == "c"
    local = flink_configuration(settings, tmp_path / "chk-1")
    assert {
        "parallelism.default",
        "execution.state-recovery.path",
        "execution.checkpointing.dir",
    } <= set(local)
    with pytest.raises(ConfigError, match="the operator chooses the restore path"):
        flink_configuration(settings, tmp_path / "chk-1", "managed")
    owned = Settings(flink=FlinkSettings(options={"parallelism.default": "8"}))
    with pytest.raises(ConfigError, match=r"sets parallelism\.default, which the Flink operator"):
        flink_configuration(owned, None, "managed")
    assert flink_configuration(owned, None)["parallelism.default"] == "8"  # local: allowed


_SUBMIT = """
import json, signal, sys
from flink import job
code = job.main(["--mode", "managed", "--config", sys.argv[1]])
default = signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
print(json.dumps({"code": code, "sigterm_default": default}))
"""


@pytest.mark.slow
def test_managed_driver_submits_and_returns_without_cancelling(tmp_path: Path) -> None:
    """The driver the operator's JobManager runs: it submits the job and returns at once,
    with no SIGTERM handler (a stopping JobManager ends the driver, never the job: no
    cancel) and without creating the local mode's folders (the pod's root is
    read-only). No broker is needed to submit."""
    local = tmp_path / "local"
    config = tmp_path / "settings.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "kafka": {"bootstrap_servers": "127.0.0.1:1"},
                "flink": {"checkpoint_dir": str(local / "checkpoints")},
                "stack": {"flink": {"log_dir": str(local / "log"), "tmp_dir": str(local / "tmp")}},
            }
        )
    )
    done = subprocess.run(
        [str(FLINK_PYTHON), "-c", textwrap.dedent(_SUBMIT), str(config)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {
        "code": 0,
        "sigterm_default": True,
    }
    assert "flink job submitted job_id=" in done.stderr, done.stderr[-3000:]
    assert "the operator owns it" in done.stderr
    assert "cancel" not in done.stderr.lower()
    assert not local.exists()
