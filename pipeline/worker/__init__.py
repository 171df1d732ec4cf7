"""The stream worker: the only package that imports faust.

The Faust app and its one consumer subclass (``consumer.py``, with every
override of Faust's internals and why), delivery of record runs, the batch
processor and its write-behind, the broker-log reader, connections, health
and metrics.
"""
