"""``python -m aircast_cli``: the same as the ``aircast`` command."""

import sys

from aircast_cli.cli import main

sys.exit(main())
