"""Alerter adapters."""

from __future__ import annotations

import logging

from strongroom_scheduler.ports import FailureAlert

log = logging.getLogger("strongroom_scheduler.alerts")


class LoggingAlerter:
    """Writes one ERROR line per alert: ``ALERT backup failed instance=... job=... error=...``.

    The error text comes last because it is free text (may contain spaces).
    """

    async def backup_failed(self, alert: FailureAlert) -> None:
        log.error(
            "ALERT backup failed instance=%s job=%s error=%s",
            alert.instance_id,
            alert.job_id,
            alert.error or "(no error message)",
        )
