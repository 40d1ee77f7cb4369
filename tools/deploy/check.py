"""`make deploy-check`: render every kustomization under deploy/, validate it offline, lint it (ADR 0044).

1. The overlays' KafkaTopic files match the topic registry (tools/deploy/kafka_topics.py).
2. Every directory under deploy/ holding a kustomization.yaml is rendered with kustomize (built once
   from the Go module proxy into the shared cache, strongroom_servers.gotools).
3. Each rendered object is validated, strictly (unknown fields are errors), against the Kubernetes
   OpenAPI schemas bundled in the `kubernetes-validate` package; Strimzi KafkaTopics, a CRD without a
   bundled schema, against the subset of the Strimzi schema below.
4. Each overlay is linted with kube-score (also built from the Go proxy); any CRITICAL fails.

Prints a report; exits 1 on any error. Needs no cluster and no network once the tools are cached.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml
from strongroom_servers.gotools import KUBE_SCORE, KUSTOMIZE, ensure_go_binary

sys.path.insert(0, str(Path(__file__).resolve().parent))
import kafka_topics  # noqa: E402  (a sibling script)

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
KUBERNETES_VERSION = "1.33.0"
# kube-score checks left out for the agent's kustomization (deploy/agent/) only: the agent runs as
# root by design, to read every file it backs up (a named capability set instead; ADR 0044).
KUBE_SCORE_IGNORED_AGENT: tuple[str, ...] = ("container-security-context-user-group-id",)

KAFKA_TOPIC_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "kafka.strimzi.io/v1beta2"},
        "kind": {"const": "KafkaTopic"},
        "metadata": {
            "type": "object",
            "required": ["name", "labels"],
            "properties": {
                "name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 253},
                "labels": {"type": "object", "required": ["strimzi.io/cluster"]},
            },
        },
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["partitions", "replicas"],
            "properties": {
                "topicName": {"type": "string", "pattern": "^[a-zA-Z0-9._-]{1,249}$"},
                "partitions": {"type": "integer", "minimum": 1},
                "replicas": {"type": "integer", "minimum": 1, "maximum": 32767},
                "config": {"type": "object"},
            },
        },
    },
}


@dataclass
class Report:
    """What the checks found: one line per rendered kustomization, then errors and kube-score's findings."""

    summary: list[str] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    criticals: int = 0
    warnings: int = 0


def kustomizations(root: Path = DEPLOY) -> list[Path]:
    """Every directory under ``root`` with a kustomization file (deploy/agent/ included when present)."""
    return sorted(p.parent for p in root.rglob("kustomization.yaml"))


def render(directory: Path, kustomize: Path) -> list[dict[str, Any]]:
    """``kustomize build directory`` as a list of objects; raises CalledProcessError with kustomize's message."""
    out = subprocess.run([str(kustomize), "build", str(directory)], capture_output=True, text=True, check=True)
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def validate(obj: dict[str, Any]) -> str | None:
    """None if ``obj`` is valid, else the reason (the bundled schema's strict check, or the KafkaTopic subset)."""
    try:
        if obj.get("kind") == "KafkaTopic":
            jsonschema.validate(obj, KAFKA_TOPIC_SCHEMA)
        else:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    except (kubernetes_validate.ValidationError, jsonschema.ValidationError) as exc:
        return f"{exc.message} at {'/'.join(map(str, exc.path))}"
    except kubernetes_validate.SchemaNotFoundError:
        return f"no schema for {obj.get('apiVersion')}/{obj.get('kind')} in Kubernetes {KUBERNETES_VERSION}"
    return None


def _name(obj: dict[str, Any]) -> str:
    meta = obj.get("metadata", {})
    return f"{obj.get('kind')}/{meta.get('namespace', '-')}/{meta.get('name')}"


def kube_score(objects: list[dict[str, Any]], binary: Path, ignored: tuple[str, ...] = ()) -> Iterator[tuple[str, str]]:
    """kube-score's ``ci`` findings for ``objects``: (level, line), level one of CRITICAL, WARNING, OK, SKIPPED."""
    text = "---\n".join(yaml.safe_dump(o, sort_keys=False) for o in objects if o.get("kind") != "KafkaTopic")
    argv = [str(binary), "score", "--output-format", "ci", "--kubernetes-version", "v1.33"]
    argv += [f"--ignore-test={test}" for test in ignored]
    result = subprocess.run([*argv, "-"], input=text, capture_output=True, text=True, check=False)
    if result.returncode not in (0, 1):
        raise RuntimeError(f"kube-score failed: {result.stderr.strip()}")
    for line in result.stdout.splitlines():
        level = line[1:].split("]", 1)[0] if line.startswith("[") else ""
        yield level, line


def run_checks() -> Report:
    """All four checks (see the module docstring); the report says what passed and what did not."""
    report = Report()
    stale = kafka_topics.check_all()
    report.errors += [f"{path}: out of date with proto/topics (make deploy-topics)" for path in stale]
    kustomize, score = ensure_go_binary(KUSTOMIZE), ensure_go_binary(KUBE_SCORE)
    for directory in kustomizations():
        relative = directory.relative_to(REPO)
        try:
            objects = render(directory, kustomize)
        except subprocess.CalledProcessError as exc:
            report.errors.append(f"{relative}: kustomize build failed: {exc.stderr.strip()}")
            continue
        invalid = [(o, reason) for o in objects if (reason := validate(o)) is not None]
        report.errors += [f"{relative}: {_name(o)}: {reason}" for o, reason in invalid]
        counts = {"CRITICAL": 0, "WARNING": 0}
        linted = directory.parent.name == "overlays" or directory.name == "agent"
        if linted:
            ignored = KUBE_SCORE_IGNORED_AGENT if directory.name == "agent" else ()
            for level, line in kube_score(objects, score, ignored):
                if level in counts:
                    counts[level] += 1
                    report.lines.append(f"  {relative}: {line}")
        report.criticals += counts["CRITICAL"]
        report.warnings += counts["WARNING"]
        lint = (
            f"kube-score: {counts['CRITICAL']} critical, {counts['WARNING']} warning"
            if linted
            else "kube-score: linted as part of the overlays"
        )
        report.summary.append(
            f"{relative}: {len(objects)} objects rendered, {len(objects) - len(invalid)} valid"
            f" (Kubernetes {KUBERNETES_VERSION} schemas, strict), {lint}"
        )
    if report.criticals:
        report.errors.append(f"kube-score: {report.criticals} critical finding(s)")
    return report


def main() -> int:
    started = time.monotonic()
    report = run_checks()
    for line in [*report.summary, *report.lines]:
        print(line)
    for error in report.errors:
        print(f"ERROR {error}", file=sys.stderr)
    status = "FAILED" if report.errors else "passed"
    print(
        f"deploy-check {status}: {len(report.errors)} error(s), {report.criticals} critical, "
        f"{report.warnings} warning(s) from kube-score {KUBE_SCORE.version}, kustomize {KUSTOMIZE.version} "
        f"({time.monotonic() - started:.1f}s)"
    )
    return 1 if report.errors else 0


if __name__ == "__main__":
    sys.exit(main())
