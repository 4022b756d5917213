"""The `aircast` command line and the local single-machine stack.

This is the side of the boundary that drives the runtimes: a command imports Ray,
TensorFlow or the runtime shells (``actors``, ``serve``, ``training``) inside the
function that needs them. The domain, ``aircast``, imports none of them (an
import-linter contract in pyproject.toml, checked by `make check` and a test)."""
