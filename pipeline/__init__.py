"""The event rollup pipeline: Kafka → Faust (validate, dedup, hourly windows) → PostgreSQL.

Follow an event through the files: ``codec`` → ``validate`` → ``batch`` (dedup,
time limits) → ``rollup`` → ``sink`` (one transaction) — wired by ``app``.
"""
