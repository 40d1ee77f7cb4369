"""File search across versions and instances (ADR 0043): the delta index and its reads.

Indexing: each point of a lineage (one filesystem of one instance) is stored as the delta from the
lineage's newest indexed point, computed by a merge of two sorted streams (the manifest's entries
and the lineage's current state, both in UTF-8 byte order of the path), so memory stays bounded and
a point whose files did not change adds no rows.

Reads: a search finds paths by name (exact or glob), then resolves, per path, which live versions
hold it: the state of a path in point ``s`` is its newest change with ``seq <= s``.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from strongroom_platform.auth import CallAuth, authorize, visible_accounts

from strongroom_catalog.errors import InvalidArgument, NotFound
from strongroom_catalog.model import (
    REMOVED,
    FileHit,
    FileVersion,
    Lineage,
    LineagePoint,
    NameQuery,
    PathKey,
    PointRecord,
    SearchChange,
    SearchState,
)
from strongroom_catalog.ports import CatalogStore, CatalogTx

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
MAX_PATTERN = 255
_GLOB_CHARS = frozenset("*?[")


# --- patterns -------------------------------------------------------------------------------


def parse_pattern(pattern: str, *, ignore_case: bool = False) -> NameQuery:
    """The query for a file name or a glob of one (``*``, ``?``, ``[...]``, ``[!...]``).

    Names are matched, not paths: a ``/`` is refused, as are empty patterns, NUL and globs
    without any literal character (they would list every file).
    """
    if not pattern:
        raise InvalidArgument("pattern is required: a file name or a glob such as '*.conf'")
    if len(pattern) > MAX_PATTERN or "\x00" in pattern:
        raise InvalidArgument(f"pattern must be at most {MAX_PATTERN} characters without NUL")
    if "/" in pattern:
        raise InvalidArgument(
            f"pattern {pattern!r} contains '/': search matches file names (e.g. 'nginx.conf' or '*.conf');"
            " use the instance filter to narrow, and `history` for one path"
        )
    if not _GLOB_CHARS & set(pattern) and not ignore_case:
        return NameQuery(exact=pattern)
    regex, literal = _glob_to_regex(pattern)
    if not literal:
        raise InvalidArgument(f"pattern {pattern!r} matches every name: give at least one literal character")
    cut = min((pattern.index(c) for c in _GLOB_CHARS if c in pattern), default=len(pattern))
    return NameQuery(regex=regex, ignore_case=ignore_case, prefix=pattern[:cut])


def _escape(char: str) -> str:
    # PostgreSQL's AREs and Python's re both read "\c" as c literally for a non-alphanumeric c
    # (an alphanumeric one would be a class escape such as \d).
    return char if char.isalnum() or not char.isascii() else "\\" + char


def _glob_to_regex(pattern: str) -> tuple[str, bool]:
    """The anchored regex of a glob, and whether it has any literal character."""
    out = ["^"]
    literal = False
    i, n = 0, len(pattern)
    while i < n:
        char = pattern[i]
        i += 1
        if char == "*":
            if out[-1] != ".*":
                out.append(".*")
        elif char == "?":
            out.append(".")
        elif char == "[":
            j = i
            if j < n and pattern[j] in "!^":
                j += 1
            if j < n and pattern[j] == "]":
                j += 1
            while j < n and pattern[j] != "]":
                j += 1
            if j >= n:  # no closing bracket: a literal '[', as fnmatch reads it
                out.append("\\[")
                literal = True
                continue
            body = pattern[i:j]
            i = j + 1
            negate = body[:1] in ("!", "^")
            if negate:
                body = body[1:]
            members = "".join("\\" + c if c in "\\[]^" else c for c in body)
            out.append("[" + ("^" if negate else "") + members + "]")
            literal = True
        else:
            out.append(_escape(char))
            literal = True
    out.append("$")
    return "".join(out), literal


# --- page tokens ----------------------------------------------------------------------------


def _token_scope(query: NameQuery, instance_id: str) -> list[object]:
    return [query.exact, query.regex, query.ignore_case, instance_id]


def encode_search_token(query: NameQuery, instance_id: str, last: PathKey) -> str:
    raw = json.dumps({"s": _token_scope(query, instance_id), "l": last.lineage_id, "p": last.path}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_search_token(token: str, query: NameQuery, instance_id: str) -> PathKey | None:
    """Where the page continues (None: the first page); InvalidArgument for a token of another search."""
    if not token:
        return None
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        if isinstance(data, dict) and data.get("s") == _token_scope(query, instance_id):
            lineage, path = data.get("l"), data.get("p")
            if isinstance(lineage, int) and isinstance(path, str):
                return PathKey(lineage, path)
    except (binascii.Error, ValueError, UnicodeDecodeError):
        pass
    raise InvalidArgument("page_token is malformed or was issued for another search")


# --- indexing -------------------------------------------------------------------------------


SearchSource = AsyncIterator[SearchState]


class IndexedEntry(Protocol):
    """What the search index keeps of an entry (an ``EntryRow`` or a manifest's ``FileEntry``)."""

    @property
    def path(self) -> str: ...

    @property
    def type(self) -> int: ...

    @property
    def size(self) -> int: ...

    @property
    def mtime_ns(self) -> int: ...


class DeltaIndexer:
    """Appends the delta of one point to its lineage's search index, fed the point's entries in order.

    ``feed`` takes the entries in strictly increasing path order (the manifest's order, checked by
    the caller); ``finish`` writes the tombstones of the paths that are gone. Bounded memory: the
    lineage's state is read in pages as the merge advances.
    """

    def __init__(self, tx: CatalogTx, lineage_id: int, seq: int, base: AsyncIterator[SearchState]) -> None:
        self._tx = tx
        self._lineage = lineage_id
        self._seq = seq
        self._base = base
        self._head: SearchState | None = None
        self._base_done = False
        self.changes = 0

    async def _next_base(self) -> None:
        try:
            self._head = await anext(self._base)
        except StopAsyncIteration:
            self._head = None
            self._base_done = True

    def _change(self, path: str, type_: int, size: int, mtime_ns: int) -> SearchChange:
        return SearchChange(self._lineage, path, self._seq, type_, size, mtime_ns)

    async def feed(self, rows: Sequence[IndexedEntry]) -> None:
        out: list[SearchChange] = []
        if self._head is None and not self._base_done:
            await self._next_base()
        for row in rows:
            path = row.path
            # Python orders str by code point, which is the UTF-8 byte order of the paths.
            while self._head is not None and self._head.path < path:
                out.append(self._change(self._head.path, REMOVED, 0, 0))
                await self._next_base()
            head = self._head
            if head is not None and head.path == path:
                if (head.type, head.size, head.mtime_ns) != (row.type, row.size, row.mtime_ns):
                    out.append(self._change(path, row.type, row.size, row.mtime_ns))
                await self._next_base()
            else:
                out.append(self._change(path, row.type, row.size, row.mtime_ns))
        await self._write(out)

    async def finish(self) -> int:
        """Write the tombstones left and the point's place in the lineage; returns the number of changes."""
        out: list[SearchChange] = []
        if self._head is None and not self._base_done:
            await self._next_base()
        while self._head is not None:
            out.append(self._change(self._head.path, REMOVED, 0, 0))
            await self._next_base()
        await self._write(out)
        return self.changes

    async def _write(self, out: list[SearchChange]) -> None:
        if out:
            await self._tx.add_search_changes(out)
            self.changes += len(out)


async def start_delta(tx: CatalogTx, point: PointRecord) -> DeltaIndexer | None:
    """A DeltaIndexer for the point, as the next point of its lineage (locked until the transaction
    ends); None when the point is in the search index already (its delta does not change)."""
    lineage_id, head = await tx.search_lineage(point.instance_id, point.account_id, point.mount_point)
    if not await tx.add_search_point(lineage_id, head + 1, point.point_id):
        return None
    return DeltaIndexer(tx, lineage_id, head + 1, tx.search_state(lineage_id, head))


# --- reads ----------------------------------------------------------------------------------


def file_versions(changes: Sequence[SearchChange], points: Sequence[LineagePoint]) -> tuple[FileVersion, ...]:
    """The live versions holding a path, newest first, from its changes (by seq) and its lineage's points."""
    seqs = [c.seq for c in changes]
    found = []
    for lp in points:
        if lp.point.expired or lp.point.canceled:
            continue
        at = bisect.bisect_right(seqs, lp.seq) - 1
        if at < 0 or changes[at].type == REMOVED:
            continue
        state = changes[at]
        found.append(
            FileVersion(
                version_id=lp.point.version_id,
                point_id=lp.point.point_id,
                created_at=lp.point.created_at,
                type=state.type,
                size=state.size,
                mtime_ns=state.mtime_ns,
            )
        )
    found.sort(key=lambda v: (v.created_at, v.version_id), reverse=True)
    return tuple(found)


async def _hits(repo: CatalogStore, keys: Sequence[PathKey], lineages: dict[int, Lineage]) -> list[FileHit]:
    if not keys:
        return []
    changes: dict[PathKey, list[SearchChange]] = {}
    for change in await repo.path_changes(keys):
        changes.setdefault(PathKey(change.lineage_id, change.path), []).append(change)
    points: dict[int, list[LineagePoint]] = {}
    for lp in await repo.lineage_points({k.lineage_id for k in keys}):
        points.setdefault(lp.lineage_id, []).append(lp)
    hits = []
    for key in keys:
        versions = file_versions(changes.get(key, []), points.get(key.lineage_id, []))
        if versions:
            lineage = lineages[key.lineage_id]
            hits.append(FileHit(lineage.instance_id, lineage.account_id, lineage.mount_point, key.path, versions))
    return hits


async def _authorized_instance(repo: CatalogStore, instance_id: str, *, call: CallAuth) -> str:
    instance_id = instance_id.strip()

    def not_found() -> NotFound:
        return NotFound(f"instance {instance_id} has no backup versions in the catalog")

    account = await repo.instance_account(instance_id)
    if account is None:
        raise not_found()
    authorize(account, not_found, call=call)
    return instance_id


@dataclass(frozen=True, slots=True)
class SearchPage:
    hits: list[FileHit]
    next_page_token: str


async def search_files(
    repo: CatalogStore,
    pattern: str,
    *,
    call: CallAuth,
    instance_id: str = "",
    ignore_case: bool = False,
    page_size: int = 0,
    page_token: str = "",
) -> SearchPage:
    """One page of the files whose name matches, in the caller's accounts (or one instance of them),
    each with the live versions holding it.

    A page may hold fewer hits than ``page_size`` (paths found only in expired or canceled
    versions are left out); the listing ends when ``next_page_token`` is empty.
    """
    query = parse_pattern(pattern, ignore_case=ignore_case)
    instance = await _authorized_instance(repo, instance_id, call=call) if instance_id.strip() else ""
    after = decode_search_token(page_token, query, instance)
    size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
    keys = await repo.search_paths(
        query, accounts=visible_accounts(call=call), instance_id=instance or None, after=after, limit=size + 1
    )
    more = len(keys) > size
    keys = keys[:size]
    lineages = {
        lineage.lineage_id: lineage
        for lineage in await repo.search_lineages(instance_id=None, lineage_ids={k.lineage_id for k in keys})
    }
    hits = await _hits(repo, keys, lineages)
    return SearchPage(hits, encode_search_token(query, instance, keys[-1]) if more else "")


def _split(path: str, lineages: Sequence[Lineage]) -> tuple[Lineage, str] | None:
    """The lineage whose mount point holds the absolute ``path`` (the longest that does), and the rest."""
    best: tuple[Lineage, str] | None = None
    for lineage in lineages:
        mount = lineage.mount_point.rstrip("/")
        if path.startswith(mount + "/") and (best is None or len(mount) > len(best[0].mount_point.rstrip("/"))):
            best = (lineage, path[len(mount) + 1 :])
    return best


async def file_history(repo: CatalogStore, instance_id: str, path: str, *, call: CallAuth) -> FileHit:
    """The live versions of the instance holding the file at absolute ``path``, newest first."""
    if not instance_id.strip():
        raise InvalidArgument("instance_id is required")
    if not path.startswith("/") or "\x00" in path:
        raise InvalidArgument(f"path {path!r} must be absolute, as on the instance (e.g. /etc/nginx/nginx.conf)")
    normalized = "/" + "/".join(s for s in path.split("/") if s)
    if any(s in (".", "..") for s in normalized.split("/")):
        raise InvalidArgument(f"path {path!r} must not contain '.' or '..' segments")
    instance = await _authorized_instance(repo, instance_id, call=call)
    split = _split(normalized, await repo.search_lineages(instance_id=instance, lineage_ids=None))
    hits = []
    if split is not None:
        lineage, rest = split
        hits = await _hits(repo, [PathKey(lineage.lineage_id, rest)], {lineage.lineage_id: lineage})
    if not hits:
        raise NotFound(f"no live version of instance {instance} holds {normalized}")
    return hits[0]
