"""Operator tools: the local stack (brokers, embedded PostgreSQL, state), status, maintenance."""
