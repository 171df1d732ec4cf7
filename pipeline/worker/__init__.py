"""The stream worker: the only package that imports faust.

The Faust app and its one consumer subclass (``consumer.py``, with every
override of Faust's internals and why), delivery of record runs, and the
Faust-free path of a batch: intake → prepare → write-behind → commit, with
the partition book they share; the broker-log reader, connections, health
and metrics.
"""
