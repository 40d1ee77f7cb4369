"""Start a rendered manifest's containers from an unpacked OCI image, without a container runtime.

Here ``podman run`` cannot start containers (setrlimit is refused; infra notes §8), so a container is
started the way a runtime would, with the pieces this machine allows:

- a private mount namespace (``unshare --mount``) in which the unpacked image's root filesystem is
  bind-mounted **read-only** when the container asks for ``readOnlyRootFilesystem``;
- its volumes bind-mounted at their ``mountPath`` (Secret volumes: directories of files with the
  volume's ``defaultMode``; emptyDir: a fresh directory owned by the pod's ``fsGroup``);
- ``/etc/hosts`` mapping the Services' names to the pods' addresses (the cluster's DNS);
- ``chroot`` as the container's ``runAsUser``/``runAsGroup``, with exactly the environment Kubernetes
  would give it (``envFrom`` ConfigMaps/Secrets in order, then ``env``), its ``workingDir``,
  ``command`` and ``args``; a root container keeps only its ``capabilities.add`` (``setpriv``).

Each pod gets a loopback address of its own (127.0.0.11, ...): a listen address ``0.0.0.0:<port>``
in the manifest becomes ``<pod address>:<port>``, as a pod's 0.0.0.0 is its own interfaces. Every
exec is in place (unshare, sh, chroot, env, the entry point), so the started process *is* the
container's main process and receives its signals.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Pod", "container_env", "launch_argv", "manifest_by_name"]


@dataclass
class Pod:
    """What a pod needs from its surroundings: its address, Secrets/ConfigMaps, the image root."""

    name: str
    address: str
    rootfs: Path
    work: Path
    hosts: Path
    config_maps: Mapping[str, Mapping[str, str]]
    secrets: Mapping[str, Mapping[str, str | bytes]]
    extra_mounts: dict[str, tuple[Path, bool]] = field(default_factory=dict)


def manifest_by_name(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    """The rendered object ``kind``/``name``; KeyError if absent."""
    for obj in objects:
        if obj["kind"] == kind and obj["metadata"]["name"] == name:
            return obj
    raise KeyError(f"{kind}/{name} is not in the rendered manifests")


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def container_env(pod: Pod, container: Mapping[str, Any]) -> dict[str, str]:
    """The container's environment as the kubelet builds it; ``0.0.0.0`` listen addresses become the pod's."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            ref, store = source["configMapRef"], pod.config_maps
        else:
            ref, store = source["secretRef"], pod.secrets
        if ref["name"] not in store:
            if ref.get("optional"):
                continue
            raise KeyError(f"{pod.name}: {ref['name']} does not exist (the kubelet would not start the pod)")
        env.update({k: _text(v) for k, v in store[ref["name"]].items()})
    for item in container.get("env", []):
        env[item["name"]] = item["value"]
    for key, value in env.items():
        if key.endswith("_LISTEN") and value.startswith("0.0.0.0:"):
            env[key] = pod.address + value.removeprefix("0.0.0.0")
    return env


def _volume_dirs(pod: Pod, spec: Mapping[str, Any]) -> dict[str, Path]:
    """A host directory per pod volume: Secret files with their mode, or an emptyDir owned by fsGroup."""
    group = spec.get("securityContext", {}).get("fsGroup")
    dirs = {}
    for volume in spec.get("volumes", []):
        path = pod.work / "volumes" / volume["name"]
        path.mkdir(parents=True, exist_ok=True)
        if "secret" in volume:
            data = pod.secrets[volume["secret"]["secretName"]]
            mode = volume["secret"].get("defaultMode", 0o644)
            for key, value in data.items():
                file = path / key
                file.write_bytes(value if isinstance(value, bytes) else value.encode())
                if group is not None:
                    os.chown(file, 0, group)
                file.chmod(mode)
            path.chmod(0o755)
        elif "emptyDir" in volume:
            if group is not None:
                os.chown(path, 0, group)
                path.chmod(0o2775)  # what the kubelet does for fsGroup: group-owned, setgid
            else:
                path.chmod(0o755)
        else:
            raise ValueError(f"{pod.name}: volume {volume['name']} is neither a Secret nor an emptyDir")
        dirs[volume["name"]] = path
    return dirs


def launch_argv(pod: Pod, spec: Mapping[str, Any], container: Mapping[str, Any]) -> list[str]:
    """The command that runs ``container`` of pod ``spec`` as described in the module docstring."""
    pod_context = spec.get("securityContext", {})
    context = {**pod_context, **container.get("securityContext", {})}
    user, group = int(context.get("runAsUser", 0)), int(context.get("runAsGroup", context.get("runAsUser", 0)))
    if context.get("runAsNonRoot") and user == 0:
        raise ValueError(f"{pod.name}: runAsNonRoot with uid 0 (the kubelet refuses to start it)")
    root = pod.work / "root"
    root.mkdir(parents=True, exist_ok=True)
    volumes = _volume_dirs(pod, spec)
    mounts: list[tuple[Path, str, bool]] = [
        (volumes[m["name"]], m["mountPath"], bool(m.get("readOnly"))) for m in container.get("volumeMounts", [])
    ]
    mounts += [(source, target, read_only) for target, (source, read_only) in pod.extra_mounts.items()]
    script = [
        "set -e",
        f"mount --bind {shlex.quote(str(pod.rootfs))} {shlex.quote(str(root))}",
    ]
    if context.get("readOnlyRootFilesystem"):
        script.append(f"mount -o remount,bind,ro {shlex.quote(str(root))}")
    for source, target, read_only in mounts:
        script.append(f"mount --bind {shlex.quote(str(source))} {shlex.quote(str(root) + target)}")
        if read_only:
            script.append(f"mount -o remount,bind,ro {shlex.quote(str(root) + target)}")
    script += [
        f"mount --bind {shlex.quote(str(pod.hosts))} {shlex.quote(str(root))}/etc/hosts",
        f"mount -t proc proc {shlex.quote(str(root))}/proc",
        f"mount --rbind /dev {shlex.quote(str(root))}/dev",
    ]
    env = container_env(pod, container)
    env.setdefault("HOSTNAME", pod.name)
    image_env = {"PATH": "/opt/strongroom/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
    argv = [*container.get("command", []), *container.get("args", [])]
    inner = ["/usr/bin/env", "-i", "-C", container.get("workingDir", "/")]
    inner += [f"{k}={v}" for k, v in {**image_env, **env}.items()] + argv
    if user == 0:
        caps = [c.lower() for c in context.get("capabilities", {}).get("add", [])]
        keep = ",".join(["-all", *(f"+{c}" for c in caps)])
        chroot = ["chroot", str(root), "/usr/bin/setpriv", f"--bounding-set={keep}", f"--inh-caps={keep}", "--"]
    else:
        chroot = ["chroot", f"--userspec={user}:{group}", f"--groups={group}", str(root)]
    script.append("exec " + shlex.join([*chroot, *inner]))
    return ["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c", "\n".join(script)]


def prepare_mount_points(rootfs: Path, containers: list[Mapping[str, Any]], extra: list[str]) -> None:
    """Create the mount points the containers' volumes need in the unpacked root (a runtime does the same)."""
    for container in containers:
        for mount in container.get("volumeMounts", []):
            (rootfs / mount["mountPath"].lstrip("/")).mkdir(parents=True, exist_ok=True)
    for target in extra:
        (rootfs / target.lstrip("/")).mkdir(parents=True, exist_ok=True)
    (rootfs / "etc" / "hosts").touch()  # the kubelet mounts its own /etc/hosts over this file
