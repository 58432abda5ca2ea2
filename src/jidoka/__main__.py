"""``python -m jidoka`` is the ``jidoka`` command."""

import sys

from .cli import main

sys.exit(main())
