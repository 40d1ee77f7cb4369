"""Glob and name search reads of the catalog's PostgreSQL adapter (ADR 0043, 0049, 0057), a mixin of
``PgCatalogStore`` as ``repository_tree`` is."""

from __future__ import annotations

from collections.abc import Collection

import asyncpg

from strongroom_catalog.model import NameQuery, PathKey

# Rows of one name ($1) or of a list of names (found first in search_names, ADR 0057), lineage by
# lineage in lineage order (ADR 0049): each lineage's paths come in path order from the index
# (name, lineage_id, path), so the LIMIT stops at the first lineages that fill the page however many
# files share the name (a join before ORDER BY ... LIMIT let the planner sort every match).
_SEARCH_BY_NAME = """
SELECT l.lineage_id, k.path FROM search_lineages l
CROSS JOIN LATERAL (
    SELECT DISTINCT c.path FROM search_changes c
    WHERE c.lineage_id = l.lineage_id AND {names} AND c.type <> 0
      AND c.path > CASE WHEN l.lineage_id = $4 THEN $5 ELSE '' END
    ORDER BY c.path
    LIMIT $6
) k
WHERE ($2::text[] IS NULL OR l.account_id = ANY($2::text[]))
  AND ($3::text IS NULL OR l.instance_id = $3)
  AND l.lineage_id >= $4
ORDER BY l.lineage_id, k.path
LIMIT $6
"""
_SEARCH_EXACT = _SEARCH_BY_NAME.format(names="c.name = $1")
_SEARCH_NAMED = _SEARCH_BY_NAME.format(names="c.name = ANY($1::text[])")


def _search_paths_sql(query: NameQuery) -> str:
    # type <> 0: the predicate of the partial name indexes. A literal prefix ($7, a range on the
    # btree of name or of lower(name)) uses the btrees; a glob starting with a wildcard uses the
    # trigram index (~, ~*): a prepared statement's generic plan cannot see a regex's prefix.
    if query.ignore_case:
        condition = "c.name ~* $1"
        if query.prefix:
            # the range alone picks the rows: the planner would rather AND it with the trigram
            # index, whose posting lists of common trigrams ("fil") cost 100+ ms at 10M rows
            condition = (
                "(c.name || '') ~* $1 AND lower(c.name) >= lower($7) AND lower(c.name) < lower($7) || chr(1114111)"
            )
    else:
        condition = "c.name ~ $1"
        if query.prefix:
            condition += " AND c.name >= $7 AND c.name < $7 || chr(1114111)"
    return f"""
SELECT c.lineage_id, c.path FROM search_changes c JOIN search_lineages l ON l.lineage_id = c.lineage_id
WHERE c.type <> 0 AND {condition}
  AND ($2::text[] IS NULL OR l.account_id = ANY($2::text[]))
  AND ($3::text IS NULL OR l.instance_id = $3)
  AND (c.lineage_id, c.path) > ($4, $5)
GROUP BY c.lineage_id, c.path
ORDER BY c.lineage_id, c.path
LIMIT $6
"""


NAME_PROBE_LIMIT = 1000
"""A glob without a literal prefix matching at most this many distinct names reads their rows by
name; one matching more (a broad glob such as ``*.conf``) scans the rows, which then fill a page
quickly (ADR 0057)."""


class PgSearchReads:
    _pool: asyncpg.Pool
    _name_probe_limit: int

    async def search_paths(
        self,
        query: NameQuery,
        *,
        accounts: Collection[str] | None,
        instance_id: str | None,
        after: PathKey | None,
        limit: int,
    ) -> list[PathKey]:
        async with self._pool.acquire() as conn, conn.transaction():
            scope = (
                None if accounts is None else list(accounts),
                instance_id,
                after.lineage_id if after is not None else 0,
                after.path if after is not None else "",
                limit,
            )
            if query.exact is not None:
                rows = await conn.fetch(_SEARCH_EXACT, query.exact, *scope)
            else:
                # a glob is planned for its own pattern: the generic plan of a prepared statement
                # cannot see the regex or the prefix and joined the lineages through an index of
                # every path of each (5 s for a case-insensitive glob at 11M rows)
                await conn.execute("SET LOCAL plan_cache_mode = force_custom_plan")
                names = await self._probe_names(conn, query)
                if names is not None:
                    rows = await conn.fetch(_SEARCH_NAMED, names, *scope)
                else:
                    prefix = [query.prefix] if query.prefix else []
                    rows = await conn.fetch(_search_paths_sql(query), query.regex, *scope, *prefix)
        return [PathKey(r["lineage_id"], r["path"]) for r in rows]

    async def _probe_names(
        self, conn: asyncpg.pool.PoolConnectionProxy[asyncpg.Record], query: NameQuery
    ) -> list[str] | None:
        """The distinct names a glob without a literal prefix matches, when there are few enough
        (:data:`NAME_PROBE_LIMIT`); None to scan the rows instead."""
        if query.prefix or self._name_probe_limit <= 0:
            return None
        operator = "~*" if query.ignore_case else "~"
        rows = await conn.fetch(
            f"SELECT name FROM search_names WHERE name {operator} $1 LIMIT $2", query.regex, self._name_probe_limit + 1
        )
        if len(rows) > self._name_probe_limit:
            return None
        return [r["name"] for r in rows]
