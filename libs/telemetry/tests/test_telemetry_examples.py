"""The example dashboard and alert rules (deploy/observability) name only metrics the processes export."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from prometheus_client import generate_latest
from strongroom_telemetry.metrics import Metrics, configure_metrics

EXAMPLES = Path(__file__).resolve().parents[3] / "deploy" / "observability"


def exported_names() -> set[str]:
    """Every sample name a process exports once each instrument has a value."""
    meters = configure_metrics("test", set_global=False)
    metrics = Metrics(meters.provider)
    metrics.job_finished("backup", "COMPLETE", 1.0)
    metrics.backup_bytes(read=2, unchanged=0, uploaded=1)
    metrics.stored.add(1)
    metrics.consumer_lag.set(0, {"group": "g", "topic": "t", "partition": "0"})
    metrics.outbox_backlog.set(0, {"schema": "s"})
    metrics.gateway_sessions.set(0)
    metrics.last_success.set(1, {"instance_id": "i"})
    text = generate_latest(meters.registry).decode()
    meters.provider.shutdown()
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}


def test_the_dashboard_and_the_alert_rules_use_exported_metrics_only() -> None:
    names = exported_names()
    dashboard = json.loads((EXAMPLES / "grafana-dashboard.json").read_text())
    rules = yaml.safe_load((EXAMPLES / "alerts.yaml").read_text())
    expressions = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    expressions += [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    used = {name for expr in expressions for name in re.findall(r"strongroom_[a-z_]+", expr)}
    assert used, "the examples query no Strongroom metric"
    assert used <= names, sorted(used - names)
    # Every metric of the catalog is shown somewhere on the dashboard.
    families = {re.sub(r"_(bucket|sum|count)$", "", n) for n in names}
    shown = {re.sub(r"_(bucket|sum|count)$", "", n) for n in used}
    assert families <= shown, sorted(families - shown)
