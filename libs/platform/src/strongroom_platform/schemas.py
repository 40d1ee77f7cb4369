"""Every schema a deployment migrates: the platform's own and those services register (ADR 0031).

A service registers its :class:`~strongroom_platform.pg_roles.SchemaSpec` as an entry point of group
``strongroom.schemas`` (``catalog = "strongroom_catalog.migrations:SPEC"``), so that
``strongroom-admin migrate`` (a library, which imports no service) finds the schemas of the services
installed beside it: all five in the workspace and in standalone mode, one in a service's image.
"""

from __future__ import annotations

from importlib.metadata import entry_points

from strongroom_platform.auth.tokens_pg import AUTH_SPEC
from strongroom_platform.pg_roles import SchemaSpec
from strongroom_platform.trusted_time import TRUSTED_SPEC

ENTRY_POINT_GROUP = "strongroom.schemas"

# Migrated before any service's schema: every service reads them.
PLATFORM_SPECS: tuple[SchemaSpec, ...] = (TRUSTED_SPEC, AUTH_SPEC)


def installed_specs() -> list[SchemaSpec]:
    """The platform's schemas, then each installed service's (sorted by entry point name)."""
    found: list[SchemaSpec] = list(PLATFORM_SPECS)
    for entry in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        spec = entry.load()
        if not isinstance(spec, SchemaSpec):
            raise TypeError(f"entry point {entry.name} = {entry.value} is not a SchemaSpec")
        found.append(spec)
    return found


def with_platform(spec: SchemaSpec) -> list[SchemaSpec]:
    """The platform's schemas and ``spec`` (once), in migration order."""
    return [*PLATFORM_SPECS, *([] if spec in PLATFORM_SPECS else [spec])]
