"""Choose the object store adapter from :class:`~strongroom_platform.settings.PlatformSettings`."""

from __future__ import annotations

from pathlib import Path

import urllib3

from strongroom_platform.clock import Clock
from strongroom_platform.objectstore import ObjectStore
from strongroom_platform.objectstore_fs import FilesystemObjectStore
from strongroom_platform.objectstore_s3 import S3ObjectStore
from strongroom_platform.settings import PlatformSettings, SettingsError

__all__ = ["open_object_store"]


async def open_object_store(settings: PlatformSettings, clock: Clock) -> ObjectStore:
    """The store named by ``settings.object_store``, ready to use.

    ``"s3"``: an :class:`S3ObjectStore` on ``settings.s3``, whose bucket is created
    with Object Lock if missing; a certificate the endpoint presents that does not verify is a
    SettingsError that says so (a setting to fix, not a fault to retry). ``"file:<dir>"``: a
    :class:`FilesystemObjectStore` rooted at ``<dir>`` (created if missing). Raises SettingsError otherwise, also for
    ``"none"`` (a process that declared it uses no object store).
    """
    kind = settings.object_store
    if kind == "none":
        raise SettingsError("this process needs an object store, but STRONGROOM_OBJECT_STORE=none")
    if kind == "s3":
        if settings.s3 is None:
            raise SettingsError("STRONGROOM_OBJECT_STORE=s3 needs the STRONGROOM_S3_* settings")
        store = S3ObjectStore.from_settings(settings.s3, clock=clock)
        try:
            await store.ensure_bucket()
        except urllib3.exceptions.MaxRetryError as exc:
            if not isinstance(exc.reason, urllib3.exceptions.SSLError):
                raise
            trusted = settings.s3.ca_file or "the system's roots"
            raise SettingsError(
                f"the object store at {settings.s3.endpoint} presented a certificate that {trusted} does not "
                f"verify ({exc.reason}); STRONGROOM_S3_TLS_CA names the CA that issued it"
            ) from exc
        return store
    if kind.startswith("file:") and len(kind) > len("file:"):
        root = Path(kind.removeprefix("file:")).expanduser()
        root.mkdir(parents=True, exist_ok=True)
        return FilesystemObjectStore(root, clock)
    raise SettingsError(f"STRONGROOM_OBJECT_STORE must be 's3', 'file:<dir>' or 'none', got {kind!r}")
