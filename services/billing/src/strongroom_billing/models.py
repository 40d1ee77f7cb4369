"""The billing view of the fleet and the overview figures (the seed's "View backup overview")."""

from __future__ import annotations

from dataclasses import dataclass

GIB = 1 << 30
FREE_QUOTA_BYTES = 100 * GIB  # per account, shared across all regions


@dataclass(frozen=True, slots=True)
class Usage:
    """Counts over the instances billing knows of (activated, or with backup versions), canceled excluded.

    ``backed_up``: instances with at least one unexpired version (released instances included).
    ``unbacked_up``: activated instances without any unexpired version.
    ``capacity_bytes``: sum of the block-storage capacity of the backed-up instances, each taken
    from its latest unexpired version.
    """

    backed_up: int
    unbacked_up: int
    capacity_bytes: int


@dataclass(frozen=True, slots=True)
class Overview:
    usage: Usage
    # Quota figures are account-wide: only the all-regions view carries them (zero otherwise).
    free_quota_bytes: int
    free_quota_used_bytes: int
    billable_bytes: int


def overview(usage: Usage, *, all_regions: bool) -> Overview:
    """The overview of ``usage``; the free quota applies to the all-regions view only."""
    if not all_regions:
        return Overview(usage=usage, free_quota_bytes=0, free_quota_used_bytes=0, billable_bytes=0)
    return Overview(
        usage=usage,
        free_quota_bytes=FREE_QUOTA_BYTES,
        free_quota_used_bytes=min(usage.capacity_bytes, FREE_QUOTA_BYTES),
        billable_bytes=max(0, usage.capacity_bytes - FREE_QUOTA_BYTES),
    )
