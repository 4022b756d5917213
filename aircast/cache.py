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


# One round trip and one command for thousands of keys: redis-py's per-command cost
# dominates a pipeline of SETs (Redis 7.0 has no MSET with a TTL).
_SET_MANY_EX = """
local ttl = ARGV[#ARGV]
for i = 1, #KEYS do
    redis.call('SET', KEYS[i], ARGV[i], 'EX', ttl)
end
return #KEYS
"""


def set_many(
    client: redis.Redis[str], items: dict[str, str], ttl_s: int, chunk: int = 10_000
) -> None:
    """SET every key to its value with one TTL, in chunks of one script call each."""
    if not items:
        return
    script = client.register_script(_SET_MANY_EX)
    keys = list(items)
    for start in range(0, len(keys), chunk):
        part = keys[start : start + chunk]
        script(keys=part, args=[items[k] for k in part] + [str(ttl_s)])
