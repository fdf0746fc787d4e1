"""`switchd run --workers 2`: shared port, shared keys, ledger writer and journal
writer, a dead worker, ledger writer or journal writer restarted."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import httpx
import trio
from prometheus_client.parser import text_string_to_metric_families

from admin_api.migrations import DEMO_SRE_TOKEN
from fastpath import requests as rq
from switchd.config import load
from switchd.daemon import ledger_config
from switchd.demo import DEMO_PIN, demo_pan
from switchd.ledger import card_account_id, open_ledger

from .conftest import Conn, connect_to


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def children(supervisor: int, pattern: str) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(supervisor), "-f", pattern],
                         capture_output=True, text=True)  # fmt: skip
    return [int(p) for p in out.stdout.split()]


def worker_pids(supervisor: int) -> list[int]:
    return children(supervisor, "cli run --worker")


def writer_pids(supervisor: int) -> list[int]:
    return children(supervisor, "writer_process import shared_main")


def journal_writer_pids(supervisor: int) -> list[int]:
    return children(supervisor, "journal_writer import shared_main")


def start_workers(tmp_path: Path, port: int, admin_port: int = 0) -> subprocess.Popen[bytes]:
    cfg_path = tmp_path / "switchd.toml"
    cfg_path.write_text(
        f'data_dir = "{tmp_path / "var"}"\n[[listeners]]\nport = {port}\n'
        f"[admin]\nport = {admin_port}\n[demo]\nterminals_per_merchant = 20\ncards = 40\n"
    )
    return subprocess.Popen(
        [sys.executable, "-m", "switchd.cli", "run", "--workers", "2", "--config", str(cfg_path)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )  # fmt: skip


async def wait_listening(proc: subprocess.Popen[bytes], port: int) -> None:
    assert proc.stdout is not None
    with trio.fail_after(60):
        line = b""
        while b"terminals on" not in line:  # the workers print their HSM's address
            line = await trio.to_thread.run_sync(proc.stdout.readline)
    # The port is announced once both workers listen: a client that
    # connects on reading the line is not refused.
    assert line.decode() == f"switchd: terminals on 127.0.0.1:{port} (2 workers)\n"


async def test_two_workers_share_the_port_and_survive_a_killed_worker(tmp_path: Path) -> None:
    port = free_port()
    cfg_path = tmp_path / "switchd.toml"
    proc = start_workers(tmp_path, port)
    try:
        addr = ("127.0.0.1", port)
        await wait_listening(proc, port)
        assert len(worker_pids(proc.pid)) == 2
        # One ledger writer and one journal writer for both workers: theirs are
        # not started.
        assert len(writer_pids(proc.pid)) == 1
        assert len(journal_writer_pids(proc.pid)) == 1
        for worker in worker_pids(proc.pid):
            assert children(worker, "writer_process") == []
            assert children(worker, "journal_writer") == []
        (await trio.open_tcp_stream(*addr)).socket.close()
        terms: list[Conn] = []
        for i in range(8):
            c = await connect_to(addr, f"{10000001 + i}", "898100012340001")
            await c.sign_on()
            terms.append(c)

        journaled: list[tuple[str, int]] = []  # sales answered by workers that then drain

        async def sales(c: Conn, seq: int, n: int) -> int:
            approved = 0
            t = c.term
            for _ in range(n):
                stan = t.next_stan()
                r = await c.call(t.frame(*rq.sale(t.ident, rq.Card(demo_pan(seq), "3012"),
                                                  stan, 1_00)))  # fmt: skip
                approved += r.rc == "00"
                journaled.append((t.tid, int(stan)))
            return approved

        async def reconnected_sales(n: int) -> int:
            """Each terminal on a new connection, with the keys of its earlier
            sign-on (whichever worker it lands on), n sales."""
            approved = 0
            for i, c in enumerate(terms):
                fresh = await connect_to(addr, c.term.tid, c.term.mid)
                fresh.term = c.term
                approved += await sales(fresh, 4 + i, n)
            return approved

        total = 0
        for i, c in enumerate(terms):
            total += await sales(c, 4 + i, 3)
        assert total == 24
        # The killed worker's last rows may be lost with it (they wait up to
        # journal.LINGER_S): only the sales from here on must be journaled.
        # Lost rows are rebuilt from the ledger by the worker that replaces
        # it: five are lost here on purpose (deleted once written), as a kill
        # within the linger loses them.
        await trio.sleep(0.5)
        lost = journaled[:5]
        with sqlite3.connect(tmp_path / "var" / "switch.sqlite") as db:
            db.executemany("DELETE FROM journal WHERE tid = ? AND stan = ? AND reversal = 0",
                           lost)  # fmt: skip
        journaled.clear()
        victim = worker_pids(proc.pid)[0]
        os.kill(victim, signal.SIGKILL)
        with trio.fail_after(30):
            while victim in worker_pids(proc.pid) or len(worker_pids(proc.pid)) < 2:
                await trio.sleep(0.2)
        with trio.fail_after(30):
            while True:
                with sqlite3.connect(tmp_path / "var" / "switch.sqlite") as db:
                    back = db.execute("SELECT tid, stan, rc, response FROM journal WHERE kind ="
                                      " 'sale' AND reversal = 0").fetchall()  # fmt: skip
                rebuilt = {(tid, stan): (rc, response) for tid, stan, rc, response in back}
                if all(k in rebuilt for k in lost):
                    break
                await trio.sleep(0.2)
        # Rebuilt rows: approved, with no answer bytes to replay (Entry.repaired).
        assert all(rebuilt[k][0] == "00" and not rebuilt[k][1] for k in lost)
        # Every terminal reconnects (some were on the dead worker) and goes on
        # with the keys of its earlier sign-on, whichever worker it lands on.
        total += await reconnected_sales(2)
        assert total == 24 + 16
        # The shared ledger writer killed: the supervisor starts another and
        # the workers send their unanswered batches to it.
        (writer,) = writer_pids(proc.pid)
        os.kill(writer, signal.SIGKILL)
        total += await reconnected_sales(1)
        assert total == 24 + 16 + 8
        assert len(writer_pids(proc.pid)) == 1 and writer_pids(proc.pid) != [writer]
        # The shared journal writer killed: the supervisor starts another, and
        # the rows the workers queued meanwhile reach it.
        (journal_writer,) = journal_writer_pids(proc.pid)
        os.kill(journal_writer, signal.SIGKILL)
        total += await reconnected_sales(1)
        assert total == 24 + 16 + 8 + 8
        with trio.fail_after(10):
            while journal_writer_pids(proc.pid) in ([], [journal_writer]):
                await trio.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    async with open_ledger(ledger_config(load(cfg_path))) as ledger:
        spent = 0
        for i in range(8):
            acct = await ledger.account(card_account_id(demo_pan(4 + i), b"demo-pan-hash-key"))
            assert acct is not None
            spent += 100_000_00 - acct.available
        assert spent == 56 * 1_00
        assert await ledger.audit() == []
    # Drained workers flushed their journals: every sale since the worker's kill,
    # once (the rows sent again to the new writer were not written twice).
    with sqlite3.connect(tmp_path / "var" / "switch.sqlite") as db:
        rows = db.execute("SELECT tid, stan FROM journal WHERE kind = 'sale'").fetchall()
    assert len(rows) == len(set(rows))
    assert set(journaled) <= set(rows) and len(journaled) == 32


async def test_workers_metrics_count_each_sale(tmp_path: Path) -> None:
    """/metrics of worker 0 merges both workers' files: each PIN sale counted once
    (the switch's counter and histogram, its DC in the HSM's), nothing left in flight."""
    port, admin_port = free_port(), free_port()
    proc = start_workers(tmp_path, port, admin_port)
    try:
        await wait_listening(proc, port)
        sales = 0
        for i in range(6):  # the kernel spreads the connections over both workers
            c = await connect_to(("127.0.0.1", port), f"{10000001 + i}", "898100012340001")
            await c.sign_on()
            t = c.term
            for _ in range(2):
                sale = rq.sale(t.ident, rq.Card(demo_pan(4 + i), "3012"), t.next_stan(), 1_00,
                               DEMO_PIN, t.pik)  # fmt: skip
                assert (await c.call(t.frame(*sale))).rc == "00"
                sales += 1
            c.stream.socket.close()
        async with httpx.AsyncClient() as http:
            r = await http.get(f"http://127.0.0.1:{admin_port}/metrics",
                               headers={"Authorization": f"Bearer {DEMO_SRE_TOKEN}"})  # fmt: skip
        assert r.status_code == 200
        got = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(r.text)
            for s in fam.samples
        }
        dc = (("command", "DC"),)
        assert got[("hsm_client_requests_total", (*dc, ("result", "ok")))] == sales
        assert got[("hsm_client_request_duration_seconds_count", dc)] == sales
        assert got[("hsm_client_request_duration_seconds_bucket", (*dc, ("le", "+Inf")))] == sales
        assert got[("hsm_client_request_duration_seconds_sum", dc)] > 0
        assert got[("hsm_server_commands_total", (("code", "00"), *dc))] == sales
        assert got[("hsm_client_hsm_up", (("hsm", "in-process"),))] == 1

        def at(name: str, **labels: str) -> float:
            return got[(name, tuple(sorted(labels.items())))]

        assert at("switchd_transactions_total", kind="sale", response_code="00") == sales
        assert at("switchd_transactions_total", kind="sign_on", response_code="00") == 6
        assert at("switchd_transaction_duration_seconds_count", kind="sale") == sales
        assert at("switchd_transaction_duration_seconds_bucket", kind="sale", le="+Inf") == sales
        assert at("switchd_transaction_duration_seconds_sum", kind="sale") > 0
        assert at("switchd_transactions_in_flight") == 0  # livesum of both workers
        # Each sale is one ledger group, committed in some batch of its worker's writer.
        commits = at("switchd_ledger_commit_duration_seconds_count")
        assert 1 <= commits == at("switchd_ledger_batch_operations_count")
        assert at("switchd_ledger_batch_operations_sum") >= sales
        assert at("switchd_ledger_queue_depth") == 0
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
