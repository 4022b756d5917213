"""``aircast evaluate`` as a user types it, on three archive days and the session's real
Ray: it prints the served figures and the interval coverage. ``python -m training.job``
runs through ``ray job submit`` in tests/test_forecast_serve.py (the API then serves what
it trained) and ``aircast train``, its command, in tests/test_commands.py."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from aircast.settings import Settings

from .helpers import last_json, run_command
from .test_archive import ARCHIVE

BIN = Path(sys.executable).parent


@pytest.mark.slow
def test_aircast_evaluate_prints_served_skill_and_coverage(
    stack_settings: Settings, stack_dir: Path, tmp_path: Path
) -> None:
    env = {
        "AIRCAST_STACK__STATE_DIR": str(stack_dir.resolve()),
        "AIRCAST_TRAIN__STORAGE_PATH": str(tmp_path / "train"),
    }
    out = run_command(
        [
            str(BIN / "aircast"), "evaluate", "--archive", str(ARCHIVE),
            "--train-start", "2019-03-01", "--train-end", "2019-03-03",
            "--test-end", "2019-03-04", "--measures", "temperature",
            "--workers", "1", "--epochs", "1", "--units", "4", "--batch-size", "256",
        ],
        env,
    )  # fmt: skip
    summary = last_json(out)
    assert isinstance(summary["models"], int) and summary["models"] > 0
    assert isinstance(summary["seconds"], float)
    row = summary["per_measure"]["temperature"]["6h"]  # type: ignore[index]
    for name in ("model_mae", "persistence_mae", "seasonal_naive_mae", "served_mae"):
        assert row[name] > 0
    assert 0.0 <= row["coverage"] <= 1.0
    assert row["served_skill"] == pytest.approx(
        1 - row["served_mae"] / row["persistence_mae"], abs=1e-3
    )
    means = summary["mean_over_measures"]["6h"]  # type: ignore[index]
    assert means["served_skill"] == pytest.approx(row["served_skill"], abs=1e-4)
