"""Producers: the publisher library, the load generator and (later) the HTTP gateway."""
