"""/metrics after real traffic: present, moving, Prometheus text format; the
shipped alerting rules and dashboard refer only to metrics that are served."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from admin_api.context import AdminContext
from admin_api.metrics_view import build_registry

from .conftest import DEMO_SRE_TOKEN, MID, Env
from .helpers import sale, signed_on

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "config" / "prometheus" / "switchd-alerts.yml"
DASHBOARD = ROOT / "config" / "grafana" / "switchd-dashboard.json"


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(all_: dict, name: str, **labels: str) -> float:  # type: ignore[type-arg]
    return sum(v for (n, ls), v in all_.items() if n == name and set(labels.items()) <= set(ls))


async def scrape(env: Env) -> str:
    async with env.client(DEMO_SRE_TOKEN) as sre:
        r = await sre.get("/metrics")
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/plain")
        return r.text


async def test_metrics_move_with_traffic(env: Env) -> None:
    c = await signed_on(env.switch, "10000012", MID)
    await sale(c, 31, 1_00)
    before = samples(await scrape(env))
    for _ in range(3):
        assert (await sale(c, 31, 1_00))[1].rc == "00"
    after = samples(await scrape(env))
    for name, labels in [
        ("switchd_transactions_total", {"kind": "sale", "response_code": "00"}),
        ("switchd_transaction_duration_seconds_count", {"kind": "sale"}),
    ]:  # this test's sales alone (one process: this one)
        assert value(after, name, **labels) == value(before, name, **labels) + 3, name
    assert value(after, "switchd_transactions_in_flight") == 0
    for name, labels in [
        ("hsm_client_requests_total", {}),
        ("hsm_client_request_duration_seconds_count", {}),
        ("switchd_ledger_commit_duration_seconds_count", {}),
        ("switchd_ledger_batch_operations_count", {}),
    ]:
        assert value(after, name, **labels) >= value(before, name, **labels) + 3, name
    assert value(after, "switchd_terminal_connections_accepted_total") >= 1
    assert value(after, "switchd_terminal_connections") >= 1
    assert value(after, "hsm_client_hsm_up") >= 1
    for present in (
        "switchd_transactions_in_flight",
        "switchd_ledger_queue_depth",
        "process_cpu_seconds_total",
        "switchd_mac_failures_total",
        "switchd_event_loop_lag_seconds_count",
    ):
        assert any(n == present for n, _ in after), present


# The HSM series one PIN sale moves by exactly one (its DC through the embedded HSM).
HSM_PER_PIN_SALE = [
    ("hsm_client_requests_total", {"command": "DC", "result": "ok"}),
    ("hsm_client_request_duration_seconds_count", {"command": "DC"}),
    ("hsm_client_request_duration_seconds_bucket", {"command": "DC", "le": "+Inf"}),
    ("hsm_server_commands_total", {"command": "DC", "code": "00"}),
]


async def test_hsm_metrics_count_each_pin_sale(env: Env) -> None:
    c = await signed_on(env.switch, "10000014", MID)
    await sale(c, 33, 1_00)
    before = samples(await scrape(env))
    for _ in range(4):
        assert (await sale(c, 33, 1_00))[1].rc == "00"
    after = samples(await scrape(env))
    for name, labels in HSM_PER_PIN_SALE:
        assert value(after, name, **labels) == value(before, name, **labels) + 4, name
    dc = {"command": "DC"}
    assert value(after, "hsm_client_request_duration_seconds_sum", **dc) > value(
        before, "hsm_client_request_duration_seconds_sum", **dc
    )


def served_names(text: str) -> set[str]:
    """Every series name /metrics serves or declares (a labelled metric with no
    series yet is declared by its # TYPE line)."""
    names = {n for n, _ in samples(text)}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            names.add(name)
            if kind == "histogram":
                names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    return names


METRIC = re.compile(r"\b((?:switchd|hsm|process)_[a-z0-9_]+)")


def referenced(text: str) -> set[str]:
    return set(METRIC.findall(text))


async def test_rules_and_dashboard_use_served_metrics(env: Env) -> None:
    c = await signed_on(env.switch, "10000013", MID)
    await sale(c, 32, 1_00)
    names = served_names(await scrape(env))
    rules = RULES.read_text()
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert exprs, "the dashboard has no queries"
    missing = (referenced(rules) | referenced("\n".join(exprs))) - names
    assert not missing, f"not served: {sorted(missing)}"
    alerts = set(re.findall(r"alert: (\w+)", rules))
    assert {
        "SwitchApprovalRateDrop",
        "SwitchMacFailureSpike",
        "SwitchHsmDown",
        "SwitchLedgerCommitSlow",
        "SwitchP99OverBudget",
    } <= alerts


def test_promtool_accepts_the_rules() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (apt-get install prometheus)")
    out = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    # The example scrape configuration (its credentials file need not exist to be checked).
    out = subprocess.run(
        [promtool, "check", "config", "--syntax-only", "prometheus.yml"],
        capture_output=True,
        text=True,
        cwd=RULES.parent,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_multiprocess_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from prometheus_client import REGISTRY
    from prometheus_client.multiprocess import MultiProcessCollector

    ctx = AdminContext.__new__(AdminContext)
    assert build_registry(ctx) is REGISTRY
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    registry = build_registry(ctx)
    assert registry is not REGISTRY
    collectors = list(registry._collector_to_names)  # what the registry will call
    assert any(isinstance(c, MultiProcessCollector) for c in collectors)


async def test_readyz_reports_each_check(env: Env, admin: httpx.AsyncClient) -> None:
    r = await admin.get("/readyz")
    assert r.status_code == 200
    checks = r.json()["checks"]
    assert checks["ledger"] == checks["hsm"] == checks["listeners"] == "ok"
    env.switch.listeners.draining = True  # type: ignore[union-attr]
    r = await admin.get("/readyz")
    assert r.status_code == 503 and r.json()["checks"]["listeners"] == "not listening"
    env.switch.listeners.draining = False  # type: ignore[union-attr]


MULTIPROCESS_SCRIPT = """
import os, sys
from prometheus_client import generate_latest
from switchd import metrics
from admin_api.metrics_view import build_registry
metrics.TRANSACTIONS.labels("sale", "00").inc(3)
metrics.IN_FLIGHT.inc()
text = generate_latest(build_registry(None)).decode()
sys.stdout.write(text)
"""


def test_multiprocess_metrics_are_merged(tmp_path: Path) -> None:
    """With PROMETHEUS_MULTIPROC_DIR, what two worker processes counted is served as one."""
    import os
    import sys

    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    for _ in range(2):  # two "workers", each counting 3 sales
        out = subprocess.run(
            [sys.executable, "-c", MULTIPROCESS_SCRIPT],
            env=env,
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
        assert out.returncode == 0, out.stderr
    got = samples(out.stdout)
    assert value(got, "switchd_transactions_total", kind="sale", response_code="00") == 6
    assert any(n == "process_cpu_seconds_total" for n, _ in got)
