"""OIDC bearer JWTs verified against the configured issuer's JWKS (ADR 0024).

Only asymmetric algorithms are accepted, so a published key can never double as an HMAC secret,
and ``none`` never verifies. The JWKS comes from a file (read at start) or an address (fetched and
cached by PyJWT's ``PyJWKClient``, in a worker thread: it blocks). Roles come from one claim:
``{"<account>": "<role>"}`` or ``["<account>:<role>", ...]``.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import jwt

from strongroom_platform.auth.principal import Principal, Role, operator
from strongroom_platform.clock import Clock
from strongroom_platform.errors import Unauthenticated
from strongroom_platform.settings import OidcSettings

ALGORITHMS = ["RS256", "RS384", "RS512", "ES256", "ES384", "EdDSA", "PS256", "PS384", "PS512"]
LEEWAY_SECONDS = 30
_INVALID = "invalid or expired OIDC token"


def looks_like_jwt(bearer: str) -> bool:
    return bearer.count(".") == 2 and bearer.startswith("ey")


def roles_from_claim(value: object) -> dict[str, Role]:
    """The account → role map of the roles claim; malformed entries make the token invalid."""
    roles: dict[str, Role] = {}
    try:
        if isinstance(value, dict):
            items = [(str(k), str(v)) for k, v in value.items()]
        elif isinstance(value, list):
            items = [tuple(str(entry).rsplit(":", 1)) for entry in value]  # type: ignore[misc]
        else:
            return {}
        for account, role in items:
            if not account:
                raise ValueError("empty account")
            roles[account] = Role.parse(role)
    except ValueError as exc:
        raise Unauthenticated(f"{_INVALID}: bad roles claim ({exc})") from None
    return roles


class OidcVerifier:
    """Verifies a JWT's signature, issuer, audience and lifetime, and maps its roles claim."""

    def __init__(self, settings: OidcSettings, clock: Clock) -> None:
        self._settings = settings
        self._clock = clock
        self._client: jwt.PyJWKClient | None = None
        self._keys: jwt.PyJWKSet | None = None
        if "://" in settings.jwks:
            self._client = jwt.PyJWKClient(settings.jwks, cache_keys=True, lifespan=300, timeout=10)
        else:
            self._keys = jwt.PyJWKSet.from_dict(json.loads(Path(settings.jwks).read_text()))

    async def _key(self, token: str) -> Any:
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.PyJWTError:
            raise Unauthenticated(_INVALID) from None
        if self._client is not None:
            try:
                return (await asyncio.to_thread(self._client.get_signing_key_from_jwt, token)).key
            except jwt.PyJWKClientConnectionError:
                raise Unauthenticated("the OIDC issuer's keys cannot be fetched; try again") from None
            except jwt.PyJWTError:
                raise Unauthenticated(_INVALID) from None
        assert self._keys is not None
        for key in self._keys.keys:
            if kid is None or key.key_id == kid:
                return key.key
        raise Unauthenticated(_INVALID)

    async def verify(self, token: str) -> Principal:
        key = await self._key(token)
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=ALGORITHMS,
                audience=self._settings.audience,
                issuer=self._settings.issuer,
                leeway=LEEWAY_SECONDS,
                options={"require": ["exp", "iss", "aud", "sub"], "verify_iat": False},
            )
        except jwt.PyJWTError:
            raise Unauthenticated(_INVALID) from None
        # PyJWT checks exp/nbf against the system clock; check them again against the injected
        # (trusted) clock so a test clock and a skewed host agree.
        now = self._clock.now().timestamp()
        if float(claims["exp"]) + LEEWAY_SECONDS < now or float(claims.get("nbf", 0)) - LEEWAY_SECONDS > now:
            raise Unauthenticated(_INVALID)
        roles = roles_from_claim(claims.get(self._settings.roles_claim))
        return operator(f"oidc:{claims['iss']}#{claims['sub']}", roles)
