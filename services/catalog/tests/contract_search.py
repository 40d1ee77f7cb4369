"""Contract of the search index (ADR 0043) over ``CatalogStore``: fake and PostgreSQL alike.

Points are indexed through the real handler (``handle_point_created``) from manifests in an
in-memory object store; the reads are the API's handlers.
"""

from __future__ import annotations

import datetime as dt

import pytest
from catalog_fixtures import DIR, FILE, T0, call, file_entry, point_created
from contract_repository import Harness
from strongroom_catalog import handlers, search
from strongroom_catalog.errors import InvalidArgument, NotFound
from strongroom_catalog.model import FileHit, PathKey
from strongroom_platform.auth import Role, operator
from strongroom_platform.manifest import encode_manifest
from strongroom_platform.testing import InMemoryObjectStore

GLOBEX_ADMIN = operator("token:globex", {"globex": Role.ADMIN})
DAY = dt.timedelta(days=1)


def manifest(files: dict[str, int]) -> bytes:
    """A manifest of these files (path -> size) and their directories, in byte order."""
    paths: dict[str, tuple[int, int]] = {"": (DIR, 0)}
    for path, size in files.items():
        parts = path.split("/")
        for n in range(1, len(parts)):
            paths["/".join(parts[:n])] = (DIR, 0)
        paths[path] = (FILE, size)
    return encode_manifest([file_entry(p, t, s) for p, (t, s) in sorted(paths.items(), key=lambda i: i[0].encode())])


DAY1 = {"etc/hosts": 120, "etc/nginx/nginx.conf": 2048, "home/a.txt": 5}
DAY2 = {"etc/hosts": 130, "etc/nginx/nginx.conf": 2048, "home/b.conf": 7}  # hosts changed, a.txt gone, b.conf new
DAY3 = {"etc/hosts": 130, "etc/nginx/nginx.conf": 2048, "home/a.txt": 6, "home/b.conf": 7}  # a.txt is back


async def index(
    harness: Harness, n: int, files: dict[str, int], *, instance: str = "i-1", mount: str = "/", day: int = 0
) -> str:
    point_id = f"p-{instance}-{mount.strip('/') or 'root'}-{n}"
    store = InMemoryObjectStore()
    await store.put(f"manifests/{point_id}", manifest(files))
    event = point_created(point_id, f"v-{instance}-{n}", instance, T0 + (day or n) * DAY, mount)
    await handlers.handle_point_created(event, repo=harness.repo, store=store, batch_size=2)
    return point_id


async def three_days(harness: Harness) -> None:
    for n, files in enumerate((DAY1, DAY2, DAY3), start=1):
        await index(harness, n, files)


async def find(harness: Harness, pattern: str, **kwargs: object) -> list[FileHit]:
    page = await search.search_files(harness.repo, pattern, call=call("ListFiles"), **kwargs)  # type: ignore[arg-type]
    return page.hits


def sizes(hit: FileHit) -> list[tuple[str, int]]:
    return [(v.version_id, v.size) for v in hit.versions]


class SearchContract:
    async def test_a_point_is_stored_as_the_delta_from_the_one_before(self, harness: Harness) -> None:
        await three_days(harness)
        (lineage,) = await harness.repo.search_lineages(instance_id="i-1", lineage_ids=None)
        changes = await harness.repo.path_changes(
            [PathKey(lineage.lineage_id, p) for p in ("etc/nginx/nginx.conf", "etc/hosts", "home/a.txt", "etc")]
        )
        by_path: dict[str, list[tuple[int, int]]] = {}
        for c in changes:
            by_path.setdefault(c.path, []).append((c.seq, c.type))
        # unchanged for three points: one row; changed on day 2: two; gone on day 2, back on day 3: three
        assert by_path == {
            "etc": [(1, DIR)],
            "etc/nginx/nginx.conf": [(1, FILE)],
            "etc/hosts": [(1, FILE), (2, FILE)],
            "home/a.txt": [(1, FILE), (2, 0), (3, FILE)],
        }
        points = await harness.repo.lineage_points([lineage.lineage_id])
        assert [(p.seq, p.point.point_id) for p in points] == [(n, f"p-i-1-root-{n}") for n in (1, 2, 3)]

    async def test_search_by_name_lists_each_hit_with_its_versions(self, harness: Harness) -> None:
        await three_days(harness)
        (hit,) = await find(harness, "nginx.conf")
        assert (hit.instance_id, hit.mount_point, hit.path, hit.full_path) == (
            "i-1",
            "/",
            "etc/nginx/nginx.conf",
            "/etc/nginx/nginx.conf",
        )
        assert sizes(hit) == [("v-i-1-3", 2048), ("v-i-1-2", 2048), ("v-i-1-1", 2048)]
        (hit,) = await find(harness, "a.txt")
        assert sizes(hit) == [("v-i-1-3", 6), ("v-i-1-1", 5)]  # not in version 2
        assert await find(harness, "nothing-like-it") == []

    async def test_globs_and_case(self, harness: Harness) -> None:
        await three_days(harness)
        assert [h.path for h in await find(harness, "*.conf")] == ["etc/nginx/nginx.conf", "home/b.conf"]
        assert [h.path for h in await find(harness, "[ab].*")] == ["home/a.txt", "home/b.conf"]
        assert [h.path for h in await find(harness, "[!a]*.conf")] == ["etc/nginx/nginx.conf", "home/b.conf"]
        assert [h.path for h in await find(harness, "host?")] == ["etc/hosts"]
        assert [h.path for h in await find(harness, "ngin*")] == ["etc/nginx", "etc/nginx/nginx.conf"]
        assert await find(harness, "HOSTS") == []
        assert [h.path for h in await find(harness, "HOSTS", ignore_case=True)] == ["etc/hosts"]
        assert [h.path for h in await find(harness, "NGIN*", ignore_case=True)] == ["etc/nginx", "etc/nginx/nginx.conf"]
        assert [h.path for h in await find(harness, "Nginx.[a-z]ONF", ignore_case=True)] == ["etc/nginx/nginx.conf"]
        assert await find(harness, "NGIN*") == []
        assert [h.path for h in await find(harness, "*.CONF", ignore_case=True)] == [
            "etc/nginx/nginx.conf",
            "home/b.conf",
        ]

    async def test_regex_characters_in_a_name_match_literally(self, harness: Harness) -> None:
        await index(harness, 1, {"x/a+b(1).txt": 1, "x/aab1.txt": 2, "x/100%_done": 3, "x/100xydone": 4})
        assert [h.path for h in await find(harness, "a+b(1).txt")] == ["x/a+b(1).txt"]
        assert [h.path for h in await find(harness, "a+b(?).*")] == ["x/a+b(1).txt"]
        assert [h.path for h in await find(harness, "100%_*")] == ["x/100%_done"]

    async def test_history_of_one_path_and_mount_points(self, harness: Harness) -> None:
        await three_days(harness)
        await index(harness, 1, {"db/x.db": 10}, mount="/data")
        await index(harness, 2, {"db/x.db": 20}, mount="/data")
        hit = await search.file_history(harness.repo, "i-1", "/etc/hosts", call=call("GetFileHistory"))
        assert sizes(hit) == [("v-i-1-3", 130), ("v-i-1-2", 130), ("v-i-1-1", 120)]
        hit = await search.file_history(harness.repo, "i-1", "/data/db/x.db", call=call("GetFileHistory"))
        assert (hit.mount_point, hit.path, sizes(hit)) == ("/data", "db/x.db", [("v-i-1-2", 20), ("v-i-1-1", 10)])
        with pytest.raises(NotFound, match="holds /etc/missing"):
            await search.file_history(harness.repo, "i-1", "/etc/missing", call=call("GetFileHistory"))
        with pytest.raises(InvalidArgument, match="absolute"):
            await search.file_history(harness.repo, "i-1", "etc/hosts", call=call("GetFileHistory"))

    async def test_fleet_wide_or_one_instance(self, harness: Harness) -> None:
        await three_days(harness)
        await index(harness, 1, {"etc/hosts": 99}, instance="i-2")
        assert sorted((h.instance_id, h.path) for h in await find(harness, "hosts")) == [
            ("i-1", "etc/hosts"),
            ("i-2", "etc/hosts"),
        ]
        assert [(h.instance_id, sizes(h)) for h in await find(harness, "hosts", instance_id="i-2")] == [
            ("i-2", [("v-i-2-1", 99)])
        ]

    async def test_another_accounts_files_are_not_found(self, harness: Harness) -> None:
        await three_days(harness)
        globex = call("ListFiles", GLOBEX_ADMIN)
        assert (await search.search_files(harness.repo, "hosts", call=globex)).hits == []
        with pytest.raises(NotFound) as foreign:
            await search.search_files(harness.repo, "hosts", instance_id="i-1", call=globex)
        with pytest.raises(NotFound) as unknown:
            await search.search_files(harness.repo, "hosts", instance_id="i-none", call=globex)
        assert str(foreign.value) == str(unknown.value).replace("i-none", "i-1")
        with pytest.raises(NotFound) as history:
            await search.file_history(harness.repo, "i-1", "/etc/hosts", call=call("GetFileHistory", GLOBEX_ADMIN))
        assert str(history.value) == str(foreign.value)

    async def test_expired_and_canceled_versions_are_left_out(self, harness: Harness) -> None:
        await three_days(harness)
        async with harness.repo.transaction() as tx:  # versions 1 and 2 are years old; 3 is kept (keep latest)
            expired = await tx.expire_due_versions(100)
        assert sorted(v.version_id for v in expired) == ["v-i-1-1", "v-i-1-2"]
        (hit,) = await find(harness, "a.txt")
        assert sizes(hit) == [("v-i-1-3", 6)]
        await index(harness, 4, {"etc/hosts": 1}, day=40)  # the index keeps working past expired points
        (hit,) = await find(harness, "hosts")
        assert sizes(hit) == [("v-i-1-4", 1), ("v-i-1-3", 130)]
        assert await find(harness, "b.conf") != []
        async with harness.repo.transaction() as tx:
            await tx.append_cancellation("i-1", "acct", canceled=True, at=T0 + 50 * DAY, event_id="e1", subject="")
        assert await find(harness, "hosts") == []
        with pytest.raises(NotFound):
            await search.file_history(harness.repo, "i-1", "/etc/hosts", call=call("GetFileHistory"))

    async def test_pages_cover_every_hit_once(self, harness: Harness) -> None:
        await index(harness, 1, {f"var/log/app-{n:02d}.log": n for n in range(7)})
        await index(harness, 1, {f"log/x-{n}.log": n for n in range(4)}, instance="i-2")
        seen: list[tuple[str, str]] = []
        token = ""
        for _ in range(10):
            page = await search.search_files(
                harness.repo, "*.log", call=call("ListFiles"), page_size=3, page_token=token
            )
            assert len(page.hits) <= 3
            seen.extend((h.instance_id, h.path) for h in page.hits)
            token = page.next_page_token
            if not token:
                break
        assert len(seen) == len(set(seen)) == 11
        first = await search.search_files(harness.repo, "*.log", call=call("ListFiles"), page_size=3)
        with pytest.raises(InvalidArgument, match="another search"):
            await search.search_files(harness.repo, "*.txt", call=call("ListFiles"), page_token=first.next_page_token)
