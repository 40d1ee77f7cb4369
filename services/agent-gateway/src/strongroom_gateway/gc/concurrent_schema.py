"""Schema of moves concurrent with backups (ADR 0057): gateway migration 18.

``repack_pack`` and ``move_chunks`` no longer refuse while a backup of the account runs. A commit
that located its chunks before a move records the move's new pack too (``GcTx.pack_successors``):
each move now carries its account's *epoch* (one more than the account's latest), and a commit
reads the account's epoch under the shared collection lock before it locates anything, so the moves
it may have missed are exactly those with a later epoch. A repack keeps the dead rows of its
sources (a running backup may have been told one of them is present): they leave the index with the
source, through ``reclaim_pack``, whose rules for running backups (ADR 0041) then protect them.
"""

from __future__ import annotations

from strongroom_gateway.gc.move_sql import move_function_sql

CONCURRENT_DDL = (
    """
-- The account's epoch of each move (NULL: a move of migrations 13/16, before any commit read one).
ALTER TABLE pack_repacks ADD COLUMN epoch bigint;
ALTER TABLE pack_moves ADD COLUMN epoch bigint;
CREATE INDEX pack_repacks_by_epoch ON pack_repacks (account_id, epoch);
CREATE INDEX pack_moves_by_epoch ON pack_moves (account_id, epoch);
"""
    + move_function_sql("repack", concurrent=True)
    + move_function_sql("move", concurrent=True)
)
