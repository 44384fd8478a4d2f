"""`epp cache serve`'s parts: epp's cache-service protocol, ModelCache's HTTP API, the admin API, the client.

protocol.py documents the protocol a replacement service implements; client.py is the ResponseCache that
speaks it; app.py the ASGI app; build.py turns CacheSettings into the TieredCache the app serves.
"""
