"""A bounded property run of the OpenAPI document against the real edge (ADR 0055, issue 12).

schemathesis generates requests for every operation of ``/openapi.json`` (as served by the running
edge, in front of the five real services) with an admin token of a throwaway account, and fails on
any 5xx, any answer outside the document (status, content type, headers, body schema). The checks
that only say "a schema-valid request was refused" are left out: the services refuse ids they did
not issue, page tokens they did not sign, reused Idempotency-Keys and unknown fields inside shared
message schemas by design (ADR 0052 lists them). Bounded: a few examples per operation, one seed.

One worker: with two, Hypothesis describes its lambdas with ``ast.parse`` in both threads at once,
and CPython 3.11's AST constructor keeps one recursion counter per interpreter, so about one run in
four died with "SystemError: AST constructor recursion depth mismatch" inside schemathesis
(CPython gh-106905), reported as a Runtime Error against whichever operation was drawing then.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from strongroom_api.rules import load_routes
from strongroom_platform.admin import create_admin_token
from strongroom_platform.certs import CA_CERT_FILE
from strongroom_testing.fixtures import PgLogins, S3Config
from test_backup_restore import Platform, running_platform, s3_settings

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.timeout(600)]

CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
)
EXAMPLES = 6  # per operation and phase: about 600 requests for the ~50 operations
SEED = 55
RUN_SECONDS = 150  # the run takes about 25-55 s on the shared machine


@pytest.fixture
async def platform(
    stack_kafka: str, pg_logins: PgLogins, s3_config: S3Config, tmp_path: Path
) -> AsyncIterator[Platform]:
    async with running_platform(stack_kafka, pg_logins, tmp_path, s3_settings(s3_config), edge=True) as running:
        yield running


async def test_the_document_holds_for_generated_requests(platform: Platform, tmp_path: Path) -> None:
    token = await create_admin_token(platform.env["STRONGROOM_PG_MIGRATE_DSN"], "fuzz")
    base = f"https://{platform.stack.addresses['api']}"
    argv = [
        sys.executable,
        "-c",
        "import sys; from schemathesis.cli import schemathesis; sys.exit(schemathesis())",
        "run",
        f"{base}/openapi.json",
        "--url",
        base,
        "--tls-verify",
        str(platform.tls_dir / CA_CERT_FILE),
        "--header",
        f"Authorization: Bearer {token}",
        "--checks",
        ",".join(CHECKS),
        "--phases",
        "examples,fuzzing",
        "--max-examples",
        str(EXAMPLES),
        "--seed",
        str(SEED),
        "--workers",
        "1",
        "--request-timeout",
        "30",
        "--no-shrink",
        "--suppress-health-check",
        "all",
        "--report",
        "junit",
        "--report-dir",
        str(tmp_path / "report"),
    ]
    env = {**os.environ, "NO_COLOR": "1", "SCHEMATHESIS_HOOKS": ""}
    started = time.monotonic()
    process = await asyncio.create_subprocess_exec(  # in tmp_path: its cache stays out of the work tree
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env, cwd=tmp_path
    )
    output, _ = await asyncio.wait_for(process.communicate(), RUN_SECONDS + 120)
    text = output.decode(errors="replace")
    took = time.monotonic() - started
    sys.stderr.write(text[-6000:] + f"\nschemathesis took {took:.1f}s\n")
    assert process.returncode == 0, findings(text)  # schemathesis exits 1 on any failed check
    tested = re.search(r"Tested: (\d+)", text)
    assert tested is not None and int(tested.group(1)) == len(load_routes()), text[-4000:]  # every operation ran


_SECTION = re.compile(r"^=+ ([A-Z][A-Z ]+) =+$", re.MULTILINE)


def findings(text: str) -> str:
    """schemathesis's ERRORS and FAILURES sections first (a CI log keeps only the message's head), then its summary."""
    heads = list(_SECTION.finditer(text))
    wanted = [
        text[head.start() : (heads[i + 1].start() if i + 1 < len(heads) else len(text))][:8000]
        for i, head in enumerate(heads)
        if head.group(1) in ("ERRORS", "FAILURES")
    ]
    return "\n".join(wanted) + "\n" + text[-3000:]
