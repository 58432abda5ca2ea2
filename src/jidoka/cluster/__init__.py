"""Many ``jidoka serve`` nodes on one PostgreSQL store and one Redis bus (blueprint §8½).

Needs the ``postgres`` extra (the store holds leases, owners and fences) and, for event streams
across nodes, the ``redis`` extra. See ``docs/operations.md``, "Running a cluster".
"""
