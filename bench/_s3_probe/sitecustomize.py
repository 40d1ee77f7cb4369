"""Benchmark probe, never installed: counts a process's S3 connections and requests (ADR 0070).

``bench/s3_connections.py`` starts the gateway with this directory first on ``PYTHONPATH`` and
``BENCH_S3_PROBE`` naming a file; Python then imports this module at start-up. Every
``urllib3`` connection that connects (a new TLS handshake over HTTPS, including the reconnect of
a pooled connection the server closed) appends ``c`` to the file, every request ``r``: the
benchmark reads the counts between phases from the file's contents. Without ``BENCH_S3_PROBE``
nothing is changed.
"""

from __future__ import annotations

import os

_PATH = os.environ.get("BENCH_S3_PROBE")

if _PATH:
    import urllib3.connection

    _FD = os.open(_PATH, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    _new_conn = urllib3.connection.HTTPConnection._new_conn
    _request = urllib3.connection.HTTPConnection.request

    def _counted_new_conn(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        os.write(_FD, b"c")  # one write(2) with O_APPEND: whole, whatever thread
        return _new_conn(self, *args, **kwargs)

    def _counted_request(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        os.write(_FD, b"r")
        return _request(self, *args, **kwargs)

    # The TCP socket under every connect, HTTPS or not (HTTPSConnection.connect calls it too).
    urllib3.connection.HTTPConnection._new_conn = _counted_new_conn  # type: ignore[method-assign]
    urllib3.connection.HTTPConnection.request = _counted_request  # type: ignore[method-assign]
