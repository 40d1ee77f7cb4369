"""``python -m strongroom_agent`` for the benchmark, with an opt-in unthrottle switch.

With ``BENCH_UNTHROTTLED=1`` the agent's per-job read throttle is replaced by ``Unlimited`` (what
the agent already does for ``max_read_bytes_per_second == 0``), because the gateway offers no way to
send 0: HIGH priority is capped at 30 MB/s by design. Everything else is the stock agent.
"""

from __future__ import annotations

import os

import strongroom_agent.backup as backup
from strongroom_agent.__main__ import main
from strongroom_agent.throttle import Unlimited

if os.environ.get("BENCH_UNTHROTTLED") == "1":
    backup.make_throttle = lambda _rate: Unlimited()  # type: ignore[assignment]

if __name__ == "__main__":
    main()
