"""OIDC bearer JWTs: verified against a locally generated issuer key, from a JWKS file or address."""

from __future__ import annotations

import base64
import hmac
import http.server
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm
from strongroom_platform.auth import Role, Unauthenticated
from strongroom_platform.auth.oidc import OidcVerifier, roles_from_claim
from strongroom_platform.clock import SystemClock
from strongroom_platform.settings import OidcSettings, SettingsError

ISSUER = "https://login.example.test/realms/ops"
AUDIENCE = "strongroom"


class Issuer:
    def __init__(self, kid: str = "k1") -> None:
        self.kid = kid
        self.key = ec.generate_private_key(ec.SECP256R1())

    def jwks(self) -> dict[str, Any]:
        jwk = ECAlgorithm.to_jwk(self.key.public_key(), as_dict=True)
        jwk.update({"kid": self.kid, "use": "sig", "alg": "ES256"})
        return {"keys": [jwk]}

    def token(self, **overrides: Any) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": "alice",
            "iat": now,
            "exp": now + 300,
            "strongroom_roles": {"acme": "operator"},
        }
        claims.update(overrides)
        claims = {k: v for k, v in claims.items() if v is not None}
        return jwt.encode(claims, self.key, algorithm="ES256", headers={"kid": self.kid})


@pytest.fixture
def issuer() -> Issuer:
    return Issuer()


@pytest.fixture
def jwks_file(issuer: Issuer, tmp_path: Path) -> Path:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(issuer.jwks()))
    return path


def verifier_for(jwks: str) -> OidcVerifier:
    return OidcVerifier(OidcSettings(issuer=ISSUER, audience=AUDIENCE, jwks=jwks), SystemClock())


async def test_a_valid_token_yields_its_subject_and_roles(issuer: Issuer, jwks_file: Path) -> None:
    principal = await verifier_for(str(jwks_file)).verify(issuer.token())
    assert principal.subject == f"oidc:{ISSUER}#alice"
    assert dict(principal.roles) == {"acme": Role.OPERATOR}


@pytest.mark.parametrize(
    "overrides",
    [
        {"iss": "https://evil.example.test"},
        {"aud": "someone-else"},
        {"exp": int(time.time()) - 3600},
        {"nbf": int(time.time()) + 3600},
        {"sub": None},
        {"strongroom_roles": {"acme": "root"}},
    ],
    ids=["issuer", "audience", "expired", "not-yet-valid", "no-subject", "unknown-role"],
)
async def test_wrong_claims_are_refused(issuer: Issuer, jwks_file: Path, overrides: dict[str, Any]) -> None:
    with pytest.raises(Unauthenticated, match="invalid or expired OIDC token"):
        await verifier_for(str(jwks_file)).verify(issuer.token(**overrides))


async def test_a_token_signed_by_another_key_is_refused(jwks_file: Path) -> None:
    with pytest.raises(Unauthenticated):
        await verifier_for(str(jwks_file)).verify(Issuer().token())


async def test_alg_none_and_hmac_with_the_public_key_are_refused(issuer: Issuer, jwks_file: Path) -> None:
    verifier = verifier_for(str(jwks_file))
    header = {"alg": "none", "typ": "JWT", "kid": "k1"}
    payload = jwt.decode(issuer.token(), options={"verify_signature": False})

    def b64(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    with pytest.raises(Unauthenticated):
        await verifier.verify(f"{b64(header)}.{b64(payload)}.")
    public_pem = issuer.key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    signing_input = b64({"alg": "HS256", "typ": "JWT", "kid": "k1"}) + "." + b64(payload)
    mac = hmac.new(public_pem, signing_input.encode(), "sha256").digest()
    forged = signing_input + "." + base64.urlsafe_b64encode(mac).rstrip(b"=").decode()
    with pytest.raises(Unauthenticated):
        await verifier.verify(forged)


def test_roles_claim_in_list_form() -> None:
    assert roles_from_claim(["acme:admin", "globex:viewer"]) == {"acme": Role.ADMIN, "globex": Role.VIEWER}
    assert roles_from_claim(None) == {}
    with pytest.raises(Unauthenticated, match="bad roles claim"):
        roles_from_claim([":admin"])


@pytest.fixture
def jwks_address(issuer: Issuer) -> Iterator[str]:
    body = json.dumps(issuer.jwks()).encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/jwks"
    finally:
        server.shutdown()
        server.server_close()


async def test_keys_are_fetched_from_the_issuers_address(issuer: Issuer, jwks_address: str) -> None:
    principal = await verifier_for(jwks_address).verify(issuer.token(sub="bob"))
    assert principal.subject.endswith("#bob")


def test_settings_refuse_a_plain_http_jwks_address_off_loopback() -> None:
    env = {"STRONGROOM_OIDC_ISSUER": ISSUER, "STRONGROOM_OIDC_AUDIENCE": AUDIENCE}
    with pytest.raises(SettingsError, match="https"):
        OidcSettings.from_env({**env, "STRONGROOM_OIDC_JWKS": "http://keys.example.test/jwks"})
    assert OidcSettings.from_env({}) is None
    settings = OidcSettings.from_env({**env, "STRONGROOM_OIDC_JWKS": "https://keys.example.test/jwks"})
    assert settings is not None and settings.roles_claim == "strongroom_roles"
