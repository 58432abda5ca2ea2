"""Background runs: agent turns started without waiting (``start_run``), watched, joined or
cancelled by id, durable across restarts, with a signed webhook when they end and idempotent
creation (issue 18). :mod:`.info` is what a client sees of a run."""
