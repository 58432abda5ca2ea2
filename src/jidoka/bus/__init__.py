"""Event buses: how events reach subscribers (see :mod:`jidoka.bus.base`)."""
