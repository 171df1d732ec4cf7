"""The pure core: decode, validate, limits, time, windows, dedup keys, planning, offsets.

The batch planner and the offset rule live here too.

No I/O here: nothing in this package imports faust, aiokafka or asyncpg
(tests/unit/test_layout.py checks it), so all of it is unit-tested in memory.
"""
