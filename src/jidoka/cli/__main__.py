"""``python -m jidoka.cli`` is the ``jidoka`` command too (as ``python -m jidoka`` is)."""

import sys

from . import main

sys.exit(main())
