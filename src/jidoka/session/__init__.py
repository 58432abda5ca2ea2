"""Sessions: their state and lifecycle (``state``), the projection of their log (``projection``),
what a model sees of them (``context``), snapshots, supervision, and the manager (a facade over
the registry, lifecycle, recovery, saved sessions and idle reaping)."""
