"""Provision InfluxDB 2 for aircast: buckets, DBRP mappings and v1 credentials.

Run once per deploy by the ``influxdb-provision`` Job (the aircast Ray image, which has
the shared core and influxdb-client). Idempotent: existing buckets get their retention
updated, existing mappings and credentials are kept (passwords are reset to the Secret's).

* one bucket per database of ``settings.influx`` with that database's retention;
* a DBRP mapping ``<database>/autogen`` -> bucket, so the v1 API (line protocol on
  ``/write``, InfluxQL on ``/query``) finds it, which is all aircast and Grafana speak;
* v1 authorizations (InfluxDB's "legacy tokens", username + password): ``aircast`` may read
  and write the three buckets, ``grafana`` may only read them.

Environment: ``AIRCAST_*`` settings (names, retentions, the app user's name) and
``INFLUXDB_ORG``; the secrets ``INFLUXDB_ADMIN_TOKEN``, ``INFLUX_APP_PASSWORD`` (the
``aircast`` user's, which the app reads as ``AIRCAST_INFLUX__PASSWORD``) and
``GRAFANA_INFLUX_PASSWORD``, each from a file named by ``<NAME>_FILE`` (a mounted Secret:
the Job's way) or from the variable itself.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from aircast.errors import ConfigError
from aircast.influx import duration_seconds
from aircast.settings import Settings, load_settings

log = logging.getLogger("aircast.provision")


@dataclass(frozen=True)
class Bucket:
    name: str
    retention_s: int  # 0 = keep forever


def retention_seconds(text: str) -> int:
    """A retention setting as InfluxDB 2's bucket API wants it: seconds, 0 = forever."""
    try:
        seconds = duration_seconds(text)
    except ConfigError as exc:
        raise ValueError(f"not a retention: {text!r} (use e.g. 30d, 12h or INF)") from exc
    return 0 if seconds is None else int(seconds)


def plan(settings: Settings) -> tuple[Bucket, ...]:
    """The buckets aircast needs, named and kept as its settings say."""
    influx = settings.influx
    return (
        Bucket(influx.raw_database, retention_seconds(influx.raw_retention)),
        Bucket(influx.aggregates_database, retention_seconds(influx.aggregates_retention)),
        Bucket(influx.predictions_database, retention_seconds(influx.predictions_retention)),
    )


def _env(name: str) -> str:
    value = os.environ.get(name, "")
    if not value:
        raise SystemExit(f"environment variable {name} is required")
    return value


def secret(name: str) -> str:
    """A secret from the file ``$<name>_FILE`` names (a mounted Secret, never on a command
    line or in the environment) or, without one, from ``$<name>``."""
    path = os.environ.get(f"{name}_FILE", "")
    if path:
        try:
            value = Path(path).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise SystemExit(f"cannot read {name}_FILE={path}: {exc}") from exc
    else:
        value = os.environ.get(name, "")
    if not value:
        raise SystemExit(f"{name} (or {name}_FILE) is required")
    return value


def provision(settings: Settings) -> None:  # pragma: no cover - needs InfluxDB 2
    from influxdb_client import InfluxDBClient
    from influxdb_client.domain import (
        BucketRetentionRules,
        DBRPCreate,
        LegacyAuthorizationPostRequest,
        PasswordResetBody,
        Permission,
        PermissionResource,
    )
    from influxdb_client.service import DBRPsService, LegacyAuthorizationsService

    org_name = _env("INFLUXDB_ORG")
    with InfluxDBClient(url=settings.influx.url, token=secret("INFLUXDB_ADMIN_TOKEN")) as client:
        deadline = time.monotonic() + 300
        while not client.ping():  # the StatefulSet may still be starting
            if time.monotonic() > deadline:
                raise SystemExit(f"InfluxDB at {settings.influx.url} not ready after 300 s")
            time.sleep(2)
        org = client.organizations_api().find_organizations(org=org_name)[0]
        buckets_api = client.buckets_api()
        ids: dict[str, str] = {}
        for wanted in plan(settings):
            rules = [BucketRetentionRules(type="expire", every_seconds=wanted.retention_s)]
            bucket = buckets_api.find_bucket_by_name(wanted.name)
            if bucket is None:
                bucket = buckets_api.create_bucket(
                    bucket_name=wanted.name, org_id=org.id, retention_rules=rules
                )
                log.info("bucket created name=%s retention_s=%s", wanted.name, wanted.retention_s)
            else:
                bucket.retention_rules = rules
                buckets_api.update_bucket(bucket)
                log.info("bucket kept name=%s retention_s=%s", wanted.name, wanted.retention_s)
            ids[wanted.name] = bucket.id

        dbrps = DBRPsService(client.api_client)
        for name, bucket_id in ids.items():
            if not dbrps.get_dbr_ps(org_id=org.id, db=name).content:
                dbrps.post_dbrp(
                    DBRPCreate(
                        org_id=org.id,
                        bucket_id=bucket_id,
                        database=name,
                        retention_policy="autogen",
                        default=True,
                    )
                )
                log.info("dbrp created database=%s rp=autogen", name)

        legacy = LegacyAuthorizationsService(client.api_client)
        users = {
            settings.influx.username or "aircast": (
                secret("INFLUX_APP_PASSWORD"),
                ("read", "write"),
            ),
            "grafana": (secret("GRAFANA_INFLUX_PASSWORD"), ("read",)),
        }
        for user, (password, actions) in users.items():
            found = legacy.get_legacy_authorizations(org_id=org.id, token=user).authorizations
            if found:
                auth_id = found[0].id
            else:
                permissions = [
                    Permission(
                        action=action,
                        resource=PermissionResource(type="buckets", id=bucket_id, org_id=org.id),
                    )
                    for bucket_id in ids.values()
                    for action in actions
                ]
                auth_id = legacy.post_legacy_authorizations(
                    LegacyAuthorizationPostRequest(
                        org_id=org.id, token=user, permissions=permissions, description=user
                    )
                ).id
                log.info("v1 authorization created user=%s actions=%s", user, ",".join(actions))
            legacy.post_legacy_authorizations_id_password(
                auth_id, PasswordResetBody(password=password)
            )


def main() -> int:  # pragma: no cover - the Job's entry point
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    provision(load_settings())
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
