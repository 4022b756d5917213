"""aircast: the shared core (domain model, settings, clients, local stack, CLI).

It never imports Ray, TensorFlow or PyFlink, so it loads in the app virtualenv and in
the Flink virtualenv alike.
"""

from __future__ import annotations

__version__ = "0.1.0"
