"""Redis, the shared cache (geocoding, dedupe state, encoders, forecasts)."""

from __future__ import annotations

from typing import Any

import redis
from redis.backoff import EqualJitterBackoff
from redis.exceptions import BusyLoadingError, ConnectionError, TimeoutError
from redis.retry import Retry

from aircast import tuning
from aircast.settings import RedisSettings

# OSError: a refused connect is a socket error, which redis-py does not retry by itself
# (its stubs type this list as Redis errors only, hence Any).
RETRY_ON: list[Any] = [BusyLoadingError, ConnectionError, TimeoutError, OSError]


def redis_client(settings: RedisSettings) -> redis.Redis[str]:
    password = settings.password.get_secret_value() if settings.password else None
    return redis.Redis.from_url(
        settings.url,
        password=password,
        decode_responses=True,
        socket_timeout=5.0,
        socket_connect_timeout=5.0,
        health_check_interval=30,
        # Each command is retried through a redis-server restart (aircast.tuning).
        retry=Retry(
            EqualJitterBackoff(cap=tuning.REDIS_RETRY_CAP_S, base=tuning.REDIS_RETRY_BASE_S),
            retries=tuning.REDIS_RETRIES,
        ),
        retry_on_error=RETRY_ON,
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
