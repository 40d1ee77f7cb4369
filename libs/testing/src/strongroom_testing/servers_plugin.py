"""pytest plugin: real-server fixtures plus one ``servers: ...`` version line at session start.

Load it from the root conftest with ``pytest_plugins = ["strongroom_testing.servers_plugin"]``.

After collection, if any selected test uses ``kafka_bootstrap``, ``pg_server_dsn``, ``pg_dsn`` or
``s3_config`` (directly or through another fixture), the servers those tests need, and only those,
are started in parallel and the versions they report are printed as one line, e.g.::

    servers: Kafka 4.3.1 (metadata.version 4.3-IV0 via ApiVersions v3; local) | PostgreSQL 18.6 on ... (local) | ...

Starting them here rather than inside the first test keeps a cold download/build out of any one
test's timeout. Nothing starts for ``--collect-only`` or when no collected test needs a server.
"""

from __future__ import annotations

from typing import cast

import pytest

from strongroom_testing.fixtures import (
    FIXTURE_KINDS,
    Kind,
    _pg_cluster,
    kafka_bootstrap,
    local_pki,
    pg_dsn,
    pg_logins,
    pg_server_dsn,
    s3_config,
    server_pool,
)

# Re-exported so pytest registers them as fixtures of this plugin.
__all__ = ["_pg_cluster", "kafka_bootstrap", "local_pki", "pg_dsn", "pg_logins", "pg_server_dsn", "s3_config"]


def _needed_kinds(items: list[pytest.Item]) -> set[Kind]:
    kinds: set[Kind] = set()
    for item in items:
        # fixturenames is the transitive closure, so a fixture built on pg_dsn counts too.
        for name in cast(list[str], getattr(item, "fixturenames", [])):
            kind = FIXTURE_KINDS.get(name)
            if kind is not None:
                kinds.add(kind)
    return kinds


def _write_line(config: pytest.Config, line: str) -> None:
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")
    if reporter is None:
        return
    if capture is not None:
        # Global capture is active during collection; write to the real terminal.
        with capture.global_and_fixture_disabled():
            reporter.write_line(line)
    else:
        reporter.write_line(line)


@pytest.hookimpl(trylast=True)
def pytest_collection_finish(session: pytest.Session) -> None:
    """Start the servers the selected tests need and print their versions on one line."""
    if session.config.option.collectonly:
        return
    kinds = _needed_kinds(session.items)
    if not kinds:
        return
    pool = server_pool(session.config)
    pool.ensure(kinds)
    _write_line(session.config, pool.version_line(kinds))
