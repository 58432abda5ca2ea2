"""Session stores: where each session's event log lives (see :mod:`jidoka.store.base`)."""
