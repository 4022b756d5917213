"""The exception tree of aircast.

AircastError
├── ConfigError          settings that cannot be built or are inconsistent
├── StackError           the local stack cannot start, is already up, or is unhealthy
├── ProduceError         the broker refused a message or did not acknowledge it in time
├── BrokerError          the broker could not be reached to read a topic
├── StorageError         InfluxDB refused or could not be reached
│   └── BackpressureError  the server asks us to slow down (HTTP 429, 503 + Retry-After)
└── InvalidRecord        one input record cannot be used; carries a dead-letter reason
"""

from __future__ import annotations


class AircastError(Exception):
    """Root of every error aircast raises on purpose."""


class ConfigError(AircastError):
    """Settings cannot be built."""


class StackError(AircastError):
    """The local stack cannot do what was asked."""


class ProduceError(AircastError):
    """Kafka did not store a message that was sent (refused, or no acknowledgement)."""


class BrokerError(AircastError):
    """Kafka could not be reached (or answered with an error) while reading a topic."""


class StorageError(AircastError):
    """InfluxDB refused a request or could not be reached."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class BackpressureError(StorageError):
    """The storage asked us to slow down; the caller pauses ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: float, status: int | None = None) -> None:
        super().__init__(message, status)
        self.retry_after = retry_after


class InvalidRecord(AircastError):
    """A record that cannot be used; ``reason`` is a short stable code for counters."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
