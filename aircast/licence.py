"""The licence of the data the API hands out, stated once.

sensor.community publishes its measurements under the Open Database License 1.0;
every response that carries readings says so (JSON: a ``licence`` object; CSV: an
HTTP ``Link: <url>; rel="license"`` header, RFC 8288), as the licence asks of
anyone who redistributes the data.
"""

from __future__ import annotations

NAME = "ODbL-1.0"
URL = "https://opendatacommons.org/licenses/odbl/1-0/"
ATTRIBUTION = "sensor.community contributors"


def as_dict() -> dict[str, str]:
    """The licence object of JSON responses: ``{"name", "url", "attribution"}``."""
    return {"name": NAME, "url": URL, "attribution": ATTRIBUTION}


def link_header() -> str:
    """The ``Link`` header value naming the licence (for responses without metadata)."""
    return f'<{URL}>; rel="license"'
