from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from aircast.errors import ConfigError
from aircast.measures import BY_NAME, MEASURES, measure
from aircast.settings import KafkaSettings, Settings, check_secrets, load_settings


def test_defaults_point_at_loopback() -> None:
    s = Settings()
    assert s.kafka.bootstrap_servers.startswith("127.0.0.1")
    assert s.influx.url.startswith("http://127.0.0.1")


def test_env_beats_yaml_and_nests(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "aircast.yaml"
    config.write_text(
        "kafka:\n  bootstrap_servers: kafka-a:9092\n  raw_topic: from-yaml\n"
        "influx:\n  url: https://influx.example:8086\n  token: yaml-token\n"
    )
    monkeypatch.setenv("AIRCAST_KAFKA__BOOTSTRAP_SERVERS", "kafka-b:9093")
    monkeypatch.setenv("AIRCAST_REDIS__PASSWORD", "s3cret")
    s = load_settings(config)
    assert s.kafka.bootstrap_servers == "kafka-b:9093"  # env wins
    assert s.kafka.raw_topic == "from-yaml"  # yaml kept where env is silent
    assert s.influx.token is not None and s.influx.token.get_secret_value() == "yaml-token"
    assert s.redis.password is not None and s.redis.password.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(s) and "yaml-token" not in repr(s)


def test_settings_are_frozen() -> None:
    s = Settings()
    with pytest.raises(ValidationError):
        s.kafka.raw_topic = "other"  # type: ignore[misc]


def test_bad_config_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("kafka: [1, 2")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(bad)
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("kafka:\n  bootstrap: x\n")
    with pytest.raises(ConfigError, match="bootstrap"):
        load_settings(unknown)


def test_services_from_env_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRCAST_STACK__SERVICES", '["redis","kafka"]')
    assert load_settings().stack.services == ("redis", "kafka")


def test_measure_table_is_defined_once_and_sane() -> None:
    assert len(BY_NAME) == len(MEASURES)
    for m in MEASURES:
        assert m.low < m.high, m
        assert m.accepts(m.low) and m.accepts(m.high)
        assert not m.accepts(m.high + 1) and not m.accepts(m.low - 1)
    assert measure("humidity").accepts(100.0)  # saturated air is a real reading
    assert measure("temperature").accepts(-35.0) and measure("temperature").accepts(45.0)
    assert not measure("P1").accepts(1999.0)
    with pytest.raises(KeyError, match="known"):
        measure("P3")


def test_the_kafka_ca_file_reaches_every_client() -> None:
    """``kafka.ssl_ca_file`` (the Strimzi cluster CA on Kubernetes) is what each of the
    three Kafka clients verifies the brokers with: kafka-python, librdkafka, Flink's."""
    from aircast.kafka import connection_options, librdkafka_options
    from flink.config import kafka_properties

    settings = KafkaSettings(
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="aircast-ingest",
        ssl_ca_file="/etc/aircast/kafka-ca/ca.crt",
    )
    assert connection_options(settings)["ssl_cafile"] == "/etc/aircast/kafka-ca/ca.crt"
    assert librdkafka_options(settings)["ssl.ca.location"] == "/etc/aircast/kafka-ca/ca.crt"
    java = kafka_properties(settings)
    assert java["ssl.truststore.type"] == "PEM"
    assert java["ssl.truststore.location"] == "/etc/aircast/kafka-ca/ca.crt"
    assert "ssl_cafile" not in connection_options(KafkaSettings())


def test_the_local_default_secrets_are_refused_outside_the_local_stack(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On 127.0.0.1 the published local credentials are fine; in a Kubernetes pod, or
    with any endpoint elsewhere, a component refuses those it uses, naming the
    variables to set (the Serve app's builder checks both)."""
    from serve.app import build_app

    check_secrets(load_settings(), os.environ)  # the local stack: accepted
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    with pytest.raises(ConfigError, match=r"influx.password .*serve.admin_token"):
        check_secrets(load_settings(), os.environ)
    with pytest.raises(ConfigError, match="AIRCAST_SERVE__ADMIN_TOKEN"):
        build_app({})
    # A component that holds no admin token (the Flink job, the collectors) checks
    # only what it uses.
    with pytest.raises(ConfigError) as refused:
        check_secrets(load_settings(), os.environ, ("influx.password",))
    assert "admin_token" not in str(refused.value)
    monkeypatch.setenv("AIRCAST_INFLUX__PASSWORD", "from-a-secret")
    check_secrets(load_settings(), os.environ, ("influx.password",))
    monkeypatch.setenv("AIRCAST_SERVE__ADMIN_TOKEN", "also-from-a-secret")
    check_secrets(load_settings(), os.environ)

    monkeypatch.delenv("KUBERNETES_SERVICE_HOST")
    monkeypatch.delenv("AIRCAST_INFLUX__PASSWORD")
    monkeypatch.delenv("AIRCAST_SERVE__ADMIN_TOKEN")
    monkeypatch.setenv("AIRCAST_REDIS__URL", "redis://:pw@cache.example:6379/0")
    with pytest.raises(ConfigError, match="AIRCAST_INFLUX__PASSWORD"):
        check_secrets(load_settings(), os.environ)
    # InfluxDB 2.x/3.x by token: the unused default password is no credential.
    monkeypatch.setenv("AIRCAST_INFLUX__TOKEN", "t0ken")
    monkeypatch.setenv("AIRCAST_SERVE__ADMIN_TOKEN", "mine")
    check_secrets(load_settings(), os.environ)
    monkeypatch.setenv("AIRCAST_REDIS__URL", "redis://[::1]:6379/0")
    monkeypatch.delenv("AIRCAST_INFLUX__TOKEN")
    monkeypatch.delenv("AIRCAST_SERVE__ADMIN_TOKEN")
    check_secrets(load_settings(), os.environ)  # [::1] is this machine too
