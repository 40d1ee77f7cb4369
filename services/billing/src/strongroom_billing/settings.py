"""Settings of the billing process; the only place that reads its environment."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation

from strongroom_platform.settings import PlatformSettings, SettingsError, env_int, env_str
from strongroom_platform.zones import DEFAULT_ZONE, zone_from_env


def _price(text: str) -> Decimal:
    try:
        price = Decimal(text.strip())
    except InvalidOperation:
        raise SettingsError(f"STRONGROOM_BILLING_PRICE_PER_GIB_DAY must be a decimal number, got {text!r}") from None
    if not price.is_finite() or price < 0 or price.as_tuple().exponent < -10:  # type: ignore[operator]
        raise SettingsError(
            f"STRONGROOM_BILLING_PRICE_PER_GIB_DAY must be ≥ 0 with at most 10 decimal places, got {text!r}"
        )
    return price


@dataclass(frozen=True, slots=True)
class LedgerSettings:
    """How days are closed and priced (ADR 0036)."""

    zone: dt.tzinfo = DEFAULT_ZONE
    price_per_gib_day: Decimal = Decimal("0.0005")
    currency: str = "USD"
    # A day is closed this long after its midnight, so that its last events have arrived.
    grace: dt.timedelta = dt.timedelta(hours=1)
    interval_seconds: float = 300.0


@dataclass(frozen=True, slots=True)
class Settings:
    """Environment:
    STRONGROOM_PG_DSN, STRONGROOM_KAFKA_*, ...: see PlatformSettings.
    STRONGROOM_GRPC_LISTEN: host:port the gRPC API listens on (default 127.0.0.1:0, any free port).
    STRONGROOM_ZONE: the zone whose midnights end billing days (default UTC+8; an offset or IANA name).
    STRONGROOM_BILLING_PRICE_PER_GIB_DAY: the price of one billable GiB for one day (default 0.0005).
    STRONGROOM_BILLING_CURRENCY: the currency the ledger shows (default USD).
    STRONGROOM_BILLING_GRACE_SECONDS: how long after its midnight a day is closed (default 3600).
    STRONGROOM_BILLING_LEDGER_INTERVAL: seconds between checks for days to close (default 300).
    """

    platform: PlatformSettings
    grpc_listen: str = "127.0.0.1:0"
    ledger: LedgerSettings = field(default_factory=LedgerSettings)

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        zone = zone_from_env(environ)
        grace = env_int(environ, "STRONGROOM_BILLING_GRACE_SECONDS", 3600)
        interval = env_int(environ, "STRONGROOM_BILLING_LEDGER_INTERVAL", 300)
        if grace < 0 or interval < 1:
            raise SettingsError("STRONGROOM_BILLING_GRACE_SECONDS must be ≥ 0 and _LEDGER_INTERVAL ≥ 1")
        currency = env_str(environ, "STRONGROOM_BILLING_CURRENCY", "USD").strip()
        if not (1 <= len(currency) <= 8 and currency.isalpha()):
            raise SettingsError(f"STRONGROOM_BILLING_CURRENCY must be 1-8 letters, got {currency!r}")
        return cls(
            platform=PlatformSettings.from_env(environ),
            grpc_listen=env_str(environ, "STRONGROOM_GRPC_LISTEN", "127.0.0.1:0"),
            ledger=LedgerSettings(
                zone=zone,
                price_per_gib_day=_price(env_str(environ, "STRONGROOM_BILLING_PRICE_PER_GIB_DAY", "0.0005")),
                currency=currency.upper(),
                grace=dt.timedelta(seconds=grace),
                interval_seconds=float(interval),
            ),
        )
