"""The generator against a real switch: one-shot terminal, a short fleet, the e2e smoke.

The switch runs as ``switchd run --config`` in a subprocess (small demo
data, fresh data directory, port 0), as the benchmarks run it, so the
asyncio/uvloop generator and the trio switch each have their own process.
"""

from __future__ import annotations

import asyncio
import gc
import json
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvloop

from bench import procs, terminal
from bench.fleet import PIN, Fleet, FleetConfig, Tally, Worker, demo_card, run_fleet
from fastpath import requests as rq
from fastpath.crypto import DesKey

PER_MERCHANT = 20
CARDS = 40


@pytest.fixture(scope="module")
def switch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[procs.Proc]:
    work = tmp_path_factory.mktemp("switch")
    conf = procs.write_switch_config(work / "var", terminals_per_merchant=PER_MERCHANT,
                                     cards=CARDS)  # fmt: skip
    proc = procs.start_switch(conf, work / "switch.log")
    yield proc
    assert proc.stop() == 0  # drains and exits cleanly


def test_fast_sale_fields_equal_the_builders() -> None:
    """The fleet's per-batch sale template gives exactly ``rq.sale``'s fields and PIN block."""
    w = Worker(Fleet(FleetConfig(terminals=1)), 0)
    t = w.term
    t.pik = DesKey(bytes.fromhex("0123456789ABCDEFFEDCBA9876543210"))
    for seq, amount, batch in ((4, 1_00, "000001"), (977, 99_99, "000001"), (12, 5_55, "000002")):
        t.batch = batch
        stan = t.next_stan()
        want = rq.sale(t.ident, demo_card(seq)[0], stan, amount, PIN, t.pik)[1]
        assert w.sale_request(seq, amount, stan) == want


def test_pick_follows_the_mix_as_choices_does() -> None:
    cfg = FleetConfig(terminals=1, mix={"sale": 70, "void": 20, "preauth": 10})
    w = Worker(Fleet(cfg), 0)
    ref = random.Random()
    ref.setstate(w.rng.getstate())
    kinds, weights = list(cfg.mix), list(cfg.mix.values())
    assert [w.pick() for _ in range(500)] == [ref.choices(kinds, weights)[0] for _ in range(500)]


def one_shot(switch: procs.Proc, kind: str, tid: str, capsys: pytest.CaptureFixture[str],
             *extra: str) -> dict:  # fmt: skip
    rc = terminal.main([kind, "--port", str(switch.port), "--tid", tid, "--json", *extra])
    out = json.loads(capsys.readouterr().out)
    assert rc == (0 if out["ok"] else 1)
    return out


def test_one_shot_sale(switch: procs.Proc, capsys: pytest.CaptureFixture[str]) -> None:
    out = one_shot(switch, "sale", "10000001", capsys, "--card", "5", "--amount", "12.34")
    assert out["ok"]
    sign_on, sale = out["answers"]
    assert sign_on["rc"] == "00" and sign_on["mac_ok"]
    assert sale["mti"] == "0210" and sale["rc"] == "00" and sale["mac_ok"]
    assert sale["fields"]["4"] == "000000001234"
    text = json.dumps(out)
    assert "6228480000000000" not in text  # no full PAN; track and PIN block only as lengths


def test_one_shot_void(switch: procs.Proc, capsys: pytest.CaptureFixture[str]) -> None:
    out = one_shot(switch, "void", "10000002", capsys, "--card", "6")
    assert out["ok"]
    assert [a["step"] for a in out["answers"]] == ["sign-on", "sale", "void"]
    assert all(a["rc"] == "00" and a["mac_ok"] for a in out["answers"])


def test_one_shot_refused_terminal(switch: procs.Proc, capsys: pytest.CaptureFixture[str]) -> None:
    out = one_shot(switch, "sale", "99999999", capsys)
    assert not out["ok"]
    assert out["answers"][0]["rc"] == "97"


def test_short_fleet_has_no_errors(switch: procs.Proc) -> None:
    tally = Tally()
    cfg = FleetConfig(port=switch.port, terminals=8, duration=2.5, first=3,
                      per_merchant=PER_MERCHANT, cards=(4, CARDS), progress=False)  # fmt: skip
    stats = run_fleet(cfg, tally)
    s = stats.summary()
    assert s["errors"] == 0, s["error_kinds"]
    assert s["sign_ons"] == 8
    assert s["settlements_balanced"] == s["settlements"] == 8
    codes = dict(s["codes"])  # type: ignore[call-overload]
    for kind in ("sale", "balance", "void", "refund", "preauth", "completion", "reversal"):
        assert codes.get(f"{kind}:00", 0) > 0, kind
    assert s["approved_sales"] > 0 and not tally.uncertain
    # The fleet pauses the generator's collector for its run, and only for it.
    assert gc.isenabled() and gc.get_freeze_count() == 0


def test_fleet_at_a_rate(switch: procs.Proc) -> None:
    cfg = FleetConfig(port=switch.port, terminals=4, duration=2.0, rate=100.0, first=12,
                      per_merchant=PER_MERCHANT, cards=(4, CARDS), mix={"sale": 1},
                      progress=False)  # fmt: skip
    s = run_fleet(cfg).summary()
    assert s["errors"] == 0, s["error_kinds"]
    assert 150 <= int(s["responses"]) <= 210  # type: ignore[call-overload]


def test_full_batches_settle_mid_run(switch: procs.Proc) -> None:
    cfg = FleetConfig(port=switch.port, terminals=2, duration=1.5, first=16, batch_full=15,
                      per_merchant=PER_MERCHANT, cards=(4, CARDS), progress=False)  # fmt: skip
    s = run_fleet(cfg).summary()
    assert s["errors"] == 0, s["error_kinds"]
    assert int(s["settlements"]) > 2  # type: ignore[call-overload]
    assert s["settlements_balanced"] == s["settlements"]
    assert int(s["sign_ons"]) == int(s["settlements"])  # type: ignore[call-overload]


def test_a_run_of_sales_survives_dropped_connections(switch: procs.Proc) -> None:
    """A connection lost mid-run: the sale in flight is reversed after a new sign-on."""
    cfg = FleetConfig(port=switch.port, terminals=4, duration=2.0, first=24, mix={"sale": 1},
                      per_merchant=PER_MERCHANT, cards=(4, CARDS), tolerate_failures=True,
                      progress=False)  # fmt: skip

    async def go() -> dict:
        fleet = Fleet(cfg)
        run = asyncio.create_task(fleet.run(None))
        await fleet.go.wait()
        await asyncio.sleep(0.7)
        for w in fleet.workers:
            assert w.link is not None and w.link.transport is not None
            w.link.transport.abort()
        return (await run).summary()

    s = uvloop.run(go())
    assert s["errors"] == 0, s["error_kinds"]
    assert dict(s["tolerated"]).get("sale: connection closed", 0) >= 1  # type: ignore[call-overload]
    assert int(s["sign_ons"]) > 4  # type: ignore[call-overload]
    assert dict(s["codes"]).get("reversal:00", 0) >= 1  # type: ignore[call-overload]
    # A fast switch also fills batches (990 sales) and settles them mid-run.
    assert s["settlements_balanced"] == s["settlements"] >= 4


def test_lost_refunds_are_resent_and_lost_completions_reversed(tmp_path: Path) -> None:
    """Connections cut again and again under refunds and pre-auth completions:
    each unanswered refund advice is sent again until answered, each unanswered
    completion reversed, so every batch still balances and the ledger holds
    exactly what the fleet saw approved, card by card."""
    from bench.soak import check_ledger

    conf = procs.write_switch_config(tmp_path / "var", terminals_per_merchant=PER_MERCHANT,
                                     cards=CARDS)  # fmt: skip
    proc = procs.start_switch(conf, tmp_path / "switch.log")
    tally = Tally()
    cfg = FleetConfig(port=proc.port, terminals=6, duration=3.0, mix={"refund": 3, "preauth": 2,
                      "sale": 1}, per_merchant=PER_MERCHANT, cards=(4, CARDS),
                      tolerate_failures=True, progress=False)  # fmt: skip

    async def go() -> dict:
        fleet = Fleet(cfg, tally=tally)
        run = asyncio.create_task(fleet.run(None))
        await fleet.go.wait()
        while time.perf_counter() < fleet.stop_at - 0.5:  # the closing settlements go uncut
            await asyncio.sleep(0.05)
            for w in fleet.workers:
                if w.link is not None and w.link.transport is not None:
                    w.link.transport.abort()
        return (await run).summary()

    try:
        s = uvloop.run(go())
    finally:
        assert proc.stop() == 0
    assert s["errors"] == 0, s["error_kinds"]
    lost = dict(s["tolerated"])  # type: ignore[call-overload]
    assert lost.get("refund: connection closed", 0) >= 1 and lost.get("preauth: connection closed")
    assert s["settlements_balanced"] == s["settlements"] >= 6
    assert not tally.uncertain
    ledger = check_ledger(tmp_path / "var" / "ledger.sqlite", tally, CARDS)
    assert ledger["mismatched_count"] == 0, ledger["mismatched"]
    assert not ledger["audit_problems"]


def test_load_cli_json(switch: procs.Proc, tmp_path: Path) -> None:
    png = tmp_path / "latency.png"
    run = subprocess.run(
        [sys.executable, "-m", "bench.load", "--port", str(switch.port), "--terminals", "3",
         "--duration", "1.5", "--first", "20", "--per-merchant", str(PER_MERCHANT),
         "--cards", f"4-{CARDS}", "--json", "--quiet", "--plot", str(png)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    s = json.loads(run.stdout)
    assert s["errors"] == 0 and s["approved_sales"] > 0
    assert png.stat().st_size > 1000


def test_e2e_quick(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "bench.e2e", "--quick", "--json", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(run.stdout)
    assert [r["terminals"] for r in result["levels"]] == [10, 40]
    for r in result["levels"]:
        assert r["approved_sales_per_s"] > 0 and r["ceiling_per_s"] > 0 and r["errors"] == 0
    assert result["idle_memory"]["connections"] == 50
    assert result["switch_exit_code"] == 0
    assert list(tmp_path.glob("e2e-*.md"))


def test_scaling_quick(tmp_path: Path) -> None:
    """1 and 2 workers, each a fresh switch, the same fleet: figures by role and a projection."""
    run = subprocess.run(
        [sys.executable, "-m", "bench.scaling", "--quick", "--json", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(run.stdout)
    assert [r["workers"] for r in result["rows"]] == [1, 2]
    for r in result["rows"]:
        for part in ("closed_loop", "fixed_rate", "half_own_peak"):
            assert r[part]["approved_sales_per_s"] > 0 and r[part]["errors"] == 0
        # Every role that did work for the sales was found by its command line.
        assert {"worker", "ledger", "journal"} <= set(r["cpu_us_per_sale"])
        assert r["cpu_us_per_sale"]["worker"] > 0 and r["cpu_us_per_sale"]["ledger"] > 0
        assert r["switch_exit_code"] == 0
    # The same offered load for both: half the baseline's peak.
    one, two = result["rows"]
    assert two["fixed_rate"]["target_per_s"] == one["fixed_rate"]["target_per_s"]
    assert two["projection"]["ledger_writer_cap_per_s"] > 0
    assert list(tmp_path.glob("scaling-*.md"))
