"""Tools around the product, which nothing in ``pipeline`` or ``producers`` imports.

The demo (``python -m tools demo``), the benchmark with its hand-rolled reference
loop (``python -m tools bench``) and the gateway benchmark (``python -m tools
gateway-bench``).
"""
