"""The per-replica cap on running backups (``STRONGROOM_GATEWAY_MAX_RUNNING_BACKUPS``, ADR 0053).

The scheduler caps the fleet's concurrent backups; a gateway replica caps what its own agents run
at once, since their uploads land on it. A session holds a **slot** from the moment its backup job
is sent until the agent reports the job finished, or the session ends. A queued backup job whose
session would need a slot when all are taken is **held**: not sent, still queued in the database
(so another replica, or a reconnect, may deliver it). When a slot frees, the session holding the
oldest job is woken with the slot kept for it, so held jobs start oldest first.

Only a backup not yet delivered is ever held. A job the agent already has (delivered or running,
re-sent on a new stream) takes its slot whatever the count: it runs already. Restores, and
cancels, are never held. The state is this process's memory only: it describes its sessions.

A held scheduled backup whose start window closes (``Job.start_before``: its slot time + the
admission window) before it gets a slot is never started: :meth:`BackupSlots.past_window` names it,
and ``held_skips`` ends it as skipped (ADR 0053, session 6).
"""

from __future__ import annotations

import datetime as dt
import heapq
from collections.abc import Sequence

from strongroom_platform.clock import Clock, SystemClock
from strongroom_platform.telemetry import Metrics, instruments

from strongroom_gateway.ports import Job
from strongroom_gateway.sessions import Session

__all__ = ["BackupSlots"]


class BackupSlots:
    """This replica's backup slots: ``limit`` sessions with a running backup at once (0: no cap).

    ``admit`` filters the jobs a session is about to send, ``finished`` and ``forget`` free slots.
    The number of jobs held back is the ``strongroom_gateway_held_jobs`` gauge.
    """

    def __init__(self, limit: int, *, clock: Clock | None = None, metrics: Metrics | None = None) -> None:
        if limit < 0:
            raise ValueError("the backup cap is 0 (none) or more")
        self._limit = limit
        self._clock: Clock = clock or SystemClock()
        self._metrics = metrics or instruments()
        # Sessions holding a slot, with the backup job ids they sent and that have not finished.
        self._running: dict[Session, set[str]] = {}
        # Sessions a freed slot is kept for until they take it (they were woken for it).
        self._reserved: set[Session] = set()
        # Sessions with held jobs waiting for a slot: (created_at, job id) of the oldest, and how many.
        self._held: dict[Session, tuple[tuple[dt.datetime, str], int]] = {}
        # Every job each session holds: those waiting for a slot, and those whose window closed.
        self._held_jobs: dict[Session, list[Job]] = {}
        # The held sessions by their oldest job; entries no longer in _held are skipped.
        self._queue: list[tuple[dt.datetime, str, int, Session]] = []
        self._order = 0

    @property
    def limit(self) -> int:
        """The most sessions with a running backup (0: no cap)."""
        return self._limit

    @property
    def running(self) -> int:
        """Sessions holding a slot."""
        return len(self._running)

    @property
    def held(self) -> int:
        """Backup jobs held back."""
        return sum(len(jobs) for jobs in self._held_jobs.values())

    def admit(self, session: Session, jobs: Sequence[Job]) -> list[Job]:
        """Of ``session``'s unfinished ``jobs`` (in delivery order), those it may send now: every job
        but the queued backups it must hold until it gets a slot, and those held until their start
        window closed (never sent; :meth:`past_window`)."""
        if self._limit == 0:
            return list(jobs)
        now = self._clock.now()
        before = {job.job_id for job in self._held_jobs.get(session, ())}
        admitted: list[Job] = []
        held: list[Job] = []
        closed: list[Job] = []
        for job in jobs:
            if job.kind != "backup" or job.cancel_requested:
                admitted.append(job)
            elif job.state != "queued":
                self._take(session, job)
                admitted.append(job)
            elif _window_closed(job, now) and (job.job_id in before or held or not self._may_start(session)):
                closed.append(job)  # it waited for a slot until its window closed: skipped, never started
            elif held == [] and self._may_start(session):
                self._take(session, job)
                admitted.append(job)
            else:
                held.append(job)  # behind a held job of its instance, a job waits too
        self._hold(session, held, closed)
        self._reserved.discard(session)  # woken for a slot it no longer needs (its job was cancelled)
        self._grant()
        self._report()
        return admitted

    def finished(self, session: Session, job_id: str) -> None:
        """The agent reported ``job_id`` finished: the session's slot frees once it runs no backup."""
        jobs = self._running.get(session)
        if jobs is None or job_id not in jobs:
            return
        jobs.discard(job_id)
        if not jobs:
            del self._running[session]
            self._grant()
            self._report()

    def past_window(self) -> list[tuple[Session, Job]]:
        """The held jobs whose start window has closed (``Job.start_before`` at or before the clock's
        now), with their sessions: to be skipped, never started."""
        now = self._clock.now()
        return [(s, job) for s, jobs in self._held_jobs.items() for job in jobs if _window_closed(job, now)]

    def drop_held(self, session: Session, job_id: str) -> None:
        """``session`` holds ``job_id`` no more (it was skipped, or is no longer queued)."""
        jobs = self._held_jobs.get(session)
        if jobs is None:
            return
        remaining = [job for job in jobs if job.job_id != job_id]
        now = self._clock.now()
        waiting = [job for job in remaining if not _window_closed(job, now)]
        self._hold(session, waiting, [job for job in remaining if _window_closed(job, now)])
        self._report()

    def forget(self, session: Session) -> None:
        """The session ended: its slot, reservation and held jobs go (the jobs stay queued)."""
        freed = self._running.pop(session, None) is not None
        freed = session in self._reserved or freed
        self._reserved.discard(session)
        self._held.pop(session, None)
        self._held_jobs.pop(session, None)
        if freed:
            self._grant()
        self._report()

    def _may_start(self, session: Session) -> bool:
        if session in self._running or session in self._reserved:
            return True
        if len(self._running) + len(self._reserved) >= self._limit:
            return False
        # A free slot with sessions waiting is theirs, oldest first (only between a release and
        # their wake-up): a newcomer waits behind them.
        head = self._head()
        return head is None or head is session

    def _take(self, session: Session, job: Job) -> None:
        self._running.setdefault(session, set()).add(job.job_id)
        self._reserved.discard(session)

    def _hold(self, session: Session, jobs: list[Job], closed: Sequence[Job] = ()) -> None:
        """``session`` holds ``jobs`` waiting for a slot (queued oldest first) and ``closed``, whose
        window closed (never granted a slot)."""
        if jobs or closed:
            self._held_jobs[session] = [*jobs, *closed]
        else:
            self._held_jobs.pop(session, None)
        if not jobs:
            self._held.pop(session, None)
            return
        oldest = min((job.created_at, job.job_id) for job in jobs)
        previous = self._held.get(session)
        self._held[session] = (oldest, len(jobs))
        if previous is None or previous[0] != oldest:
            self._order += 1
            heapq.heappush(self._queue, (oldest[0], oldest[1], self._order, session))

    def _head(self) -> Session | None:
        """The held session with the oldest job (stale queue entries dropped)."""
        while self._queue:
            created_at, job_id, _, session = self._queue[0]
            entry = self._held.get(session)
            if entry is not None and entry[0] == (created_at, job_id):
                return session
            heapq.heappop(self._queue)
        return None

    def _grant(self) -> None:
        """Keep each free slot for the held session with the oldest job, and wake it."""
        while len(self._running) + len(self._reserved) < self._limit:
            session = self._head()
            if session is None:
                return
            heapq.heappop(self._queue)  # its jobs count as held until it sends them (admit)
            self._reserved.add(session)
            session.wake.set()

    def _report(self) -> None:
        self._metrics.gateway_held_jobs.set(self.held)


def _window_closed(job: Job, now: dt.datetime) -> bool:
    return job.start_before is not None and job.start_before <= now
