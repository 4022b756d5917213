"""Redis, the shared cache (geocoding, dedupe state, encoders, forecasts)."""

from __future__ import annotations

import redis

from aircast.settings import RedisSettings


def redis_client(settings: RedisSettings) -> redis.Redis[str]:
    password = settings.password.get_secret_value() if settings.password else None
    return redis.Redis.from_url(
        settings.url,
        password=password,
        decode_responses=True,
        socket_timeout=5.0,
        socket_connect_timeout=5.0,
        health_check_interval=30,
        retry_on_timeout=True,
    )


def key(settings: RedisSettings, *parts: str) -> str:
    """A namespaced key: ``<prefix>part:part``."""
    return settings.key_prefix + ":".join(parts)
