"""PostgreSQL: the batch writer, every statement the worker and the tools run, migrations."""
