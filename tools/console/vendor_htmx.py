"""``make console-vendor``: fetch the pinned htmx from the npm registry and rewrite the vendored copy.

The console serves htmx itself (no CDN, works offline, ADR 0054). The pin is
``services/api/src/strongroom_api/console/static/htmx.json``: package, version and the registry's
``integrity`` (sha512 of the tarball). This script asks the registry named by the environment
(``NPM_CONFIG_REGISTRY`` / ``npm_config_registry``, else ``npm config get registry``) for that
version, refuses a tarball whose sha512 differs from the pin, and writes ``htmx.min.js`` and its
licence next to the pin with the file's sha256 (which a unit test checks). To move to another
version, change ``version`` and ``integrity`` in the pin (``npm view htmx.org@X dist.integrity``).
Standard library only.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import urllib.request
from pathlib import Path

STATIC = Path(__file__).resolve().parents[2] / "services/api/src/strongroom_api/console/static"
PIN = STATIC / "htmx.json"


def registry() -> str:
    for name in ("NPM_CONFIG_REGISTRY", "npm_config_registry"):
        if os.environ.get(name):
            return os.environ[name].rstrip("/")
    npm = shutil.which("npm")
    if npm is None:
        raise SystemExit("no npm registry: set NPM_CONFIG_REGISTRY (or install npm, whose default is used)")
    done = subprocess.run([npm, "config", "get", "registry"], capture_output=True, text=True, check=True, timeout=60)
    return done.stdout.strip().rstrip("/")


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=120) as response:  # noqa: S310 - the registry's https URL
        data: bytes = response.read()
        return data


def main() -> int:
    pin = json.loads(PIN.read_text())
    base = registry()
    meta = json.loads(fetch(f"{base}/{pin['package']}/{pin['version']}"))
    if meta["dist"]["integrity"] != pin["integrity"]:
        raise SystemExit(f"the registry's integrity {meta['dist']['integrity']} is not the pinned {pin['integrity']}")
    tarball = fetch(meta["dist"]["tarball"])
    algorithm, _, expected = pin["integrity"].partition("-")
    if algorithm != "sha512" or base64.b64encode(hashlib.sha512(tarball).digest()).decode() != expected:
        raise SystemExit("the downloaded tarball does not match the pinned sha512 integrity; nothing written")
    with tarfile.open(fileobj=io.BytesIO(tarball), mode="r:gz") as archive:
        script = archive.extractfile(f"package/{pin['file']}")
        licence = archive.extractfile("package/LICENSE")
        if script is None or licence is None:
            raise SystemExit(f"the tarball has no package/{pin['file']} or package/LICENSE")
        script_bytes, licence_bytes = script.read(), licence.read()
    (STATIC / "htmx.min.js").write_bytes(script_bytes)
    (STATIC / "htmx.LICENSE.txt").write_bytes(licence_bytes)
    pin["sha256"] = hashlib.sha256(script_bytes).hexdigest()
    PIN.write_text(json.dumps(pin, indent=2) + "\n")
    print(f"htmx {pin['version']}: {len(script_bytes)} bytes, sha256 {pin['sha256']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
