"""Every installed schema with the outbox also has its traceparent (ADR 0039) and shard (ADR 0050) columns.

``outbox.enqueue`` writes the column, so a service whose migrations create the outbox without
appending ``db.outbox_traceparent_migration`` could not produce a single event.
"""

from __future__ import annotations

from strongroom_platform.outbox import OUTBOX_DDL, OUTBOX_SHARD_DDL, OUTBOX_TRACEPARENT_DDL
from strongroom_platform.schemas import installed_specs


def test_each_outbox_schema_appends_the_traceparent_migration_after_the_outbox() -> None:
    with_outbox = []
    for spec in installed_specs():
        sqls = [m.sql for m in spec.migrations]
        if OUTBOX_DDL not in sqls:
            continue
        with_outbox.append(spec.schema)
        assert OUTBOX_TRACEPARENT_DDL in sqls, spec.schema
        assert sqls.index(OUTBOX_TRACEPARENT_DDL) > sqls.index(OUTBOX_DDL), spec.schema
        assert OUTBOX_SHARD_DDL in sqls, spec.schema
        assert sqls.index(OUTBOX_SHARD_DDL) > sqls.index(OUTBOX_DDL), spec.schema
    assert {"scheduler", "catalog", "gateway", "restore", "billing"} <= set(with_outbox)
