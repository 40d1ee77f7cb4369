"""The images under testcontainers, wherever a Docker-compatible engine answers (ADR 0044).

On the project's own machines no engine answers (no daemon; podman cannot start containers), so this
is skipped there and the reason is printed (pytest -ra). The deploy smoke test covers the same
images with unshare + chroot.
"""

from __future__ import annotations

import io
import tarfile
import time
from pathlib import Path

import pytest
from image_cache import cached_images
from strongroom_servers.images import BuiltImage

pytestmark = pytest.mark.integration


def _engine() -> object:
    try:
        import docker

        client = docker.from_env(timeout=5)
        client.ping()
    except Exception as exc:  # no SDK, no socket, engine down: all mean "no engine here"
        pytest.skip(f"testcontainers path skipped: no Docker-compatible engine answers ({type(exc).__name__}: {exc})")
    return client


def _load(client: object, image: BuiltImage, name: str) -> None:
    """Load the OCI layout into the engine (``docker load`` takes an OCI image archive)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for path in sorted(image.layout.rglob("*")):
            archive.add(path, arcname=str(path.relative_to(image.layout)), recursive=False)
    loaded = client.images.load(buffer.getvalue())  # type: ignore[attr-defined]
    loaded[0].tag(name, tag=image.tag)


def test_services_image_runs_as_10001_and_its_entry_points_start() -> None:
    client = _engine()
    from testcontainers.core.container import DockerContainer

    built = cached_images()
    _load(client, built["services"], "strongroom/services")
    ref = f"strongroom/services:{built['services'].tag}"
    with DockerContainer(ref).with_command("id -u") as container:
        _wait_exit(container)
        assert container.get_logs()[0].decode().strip() == "10001"
    for entry_point in ("strongroom-scheduler", "strongroom-api"):  # the REST edge ships in it too (ADR 0055)
        with DockerContainer(ref).with_command(entry_point) as container:
            code = _wait_exit(container)
            out, err = container.get_logs()
            assert code == 2 and b"STRONGROOM_" in out + err  # settings refused, one line, before anything starts


def _wait_exit(container: object, within: float = 60.0) -> int:
    wrapped = container.get_wrapped_container()  # type: ignore[attr-defined]
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        wrapped.reload()
        if wrapped.status == "exited":
            return int(wrapped.attrs["State"]["ExitCode"])
        time.sleep(0.5)
    raise AssertionError(f"container did not exit within {within}s")


def test_layout_is_an_oci_image_layout(tmp_path: Path) -> None:
    """What _load hands to the engine is an OCI layout (checked without an engine, on a tiny layout)."""
    layout = tmp_path / "layout"
    (layout / "blobs" / "sha256").mkdir(parents=True)
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (layout / "index.json").write_text('{"schemaVersion": 2, "manifests": []}')

    class _Images:
        def load(self, data: bytes) -> list[object]:
            with tarfile.open(fileobj=io.BytesIO(data)) as archive:
                self.names = sorted(archive.getnames())
            return [type("Image", (), {"tag": lambda self, name, tag: None})()]

    class _Client:
        images = _Images()

    client = _Client()
    _load(client, BuiltImage("services", layout, "0.1.0", 0, 0.0), "strongroom/services")
    assert client.images.names == ["blobs", "blobs/sha256", "index.json", "oci-layout"]
