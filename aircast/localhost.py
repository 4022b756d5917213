"""Helpers every process on a single machine shares: free loopback ports, and the
environment Ray's processes and clients run with (no Ray import: it is only names)."""

from __future__ import annotations

import os
import socket


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def ray_environment() -> dict[str, str]:
    """The environment every Ray process of aircast runs with (cluster and clients)."""
    return {
        "RAY_USAGE_STATS_ENABLED": "0",
        # Keeps Ray (and TensorFlow's gRPC) on 127.0.0.1 on a single machine.
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled"),
    }
