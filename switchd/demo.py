"""The demo data of the embedded defaults, created on first start.

Everything here is a DEMO value, published on purpose so that a new user
and the tests can transact at once: never use these keys in production.

- Acquirer 01020000. Merchant 898100012340001 "Demo Grocery" (fee 0.38 %),
  terminals 10000001-10005000; merchant 898100012340002 "Demo Cafe" (fee
  0.60 %), terminals 20000001-20005000. Every terminal's TMK is the demo key
  404142434445464748494A4B4C4D4E4F.
- On-us BIN 622848 "Demo Bank": cards 622848 + 12-digit sequence + Luhn
  digit, sequence 1 to 10000, PIN 123456, expiry 3012. Sequence 1 holds
  1,000,000.00, sequence 2 holds 10.00, sequence 3 expired (2001), the
  others 100,000.00.

Creation is idempotent (ids are derived, inserts ignore what exists) and
marked done in ``switch_keys`` so later starts skip it.
"""

from __future__ import annotations

import functools
import logging

import trio

from hsm.client import PVK, HsmClient
from switchd.config import Config
from switchd.context import luhn_ok, mask_pan
from switchd.db import Cursor
from switchd.ledger import (
    AccountKind,
    CreateAccount,
    Ledger,
    Transfer,
    card_account_id,
    fee_account_id,
    merchant_account_id,
    suspense_account_id,
    transfer_id,
)
from switchd.store import Store, bump_version, now_us

log = logging.getLogger("switchd.demo")

DEMO_TMK = bytes.fromhex("404142434445464748494A4B4C4D4E4F")
DEMO_BIN = "622848"
DEMO_PIN = "123456"
MERCHANTS = (
    ("898100012340001", "Demo Grocery", "5411", 38, 10_000_001),
    ("898100012340002", "Demo Cafe", "5814", 60, 20_000_001),
)
MARKER = "demo_data_v1"
HSM_CONCURRENCY = 64


@functools.lru_cache(maxsize=65536)
def demo_pan(seq: int) -> str:
    body = f"{DEMO_BIN}{seq:012d}"
    for check in range(10):
        if luhn_ok(body + str(check)):
            return body + str(check)
    raise AssertionError("unreachable")


def demo_balance(seq: int) -> int:
    return {1: 1_000_000_00, 2: 10_00}.get(seq, 100_000_00)


def demo_expiry(seq: int) -> str:
    return "2001" if seq == 3 else "3012"


async def ensure(cfg: Config, store: Store, ledger: Ledger, hsm: HsmClient, tmk_lmk: str,
                 pan_key: bytes) -> None:  # fmt: skip
    if await store.switch_key(MARKER):
        return
    log.info("creating the demo data (first start)")
    currency = cfg.transactions.currency
    n_terms = cfg.demo.terminals_per_merchant
    ts = now_us()

    pvk = await store.switch_key("demo_pvk") or (await hsm.generate_key(PVK)).under_lmk
    await store.set_switch_key("demo_pvk", pvk)

    # PVVs through the HSM (BA then DG per card), many at a time.
    pvvs: dict[int, str] = {}
    sem = trio.Semaphore(HSM_CONCURRENCY)

    async def one(seq: int) -> None:
        async with sem:
            pan = demo_pan(seq)
            account12 = pan[-13:-1]
            pin_lmk = await hsm.encrypt_pin(DEMO_PIN, account12)
            pvvs[seq] = await hsm.generate_pvv(pvk, pin_lmk, account12, "1")

    async with trio.open_nursery() as nursery:
        for seq in range(1, cfg.demo.cards + 1):
            nursery.start_soon(one, seq)

    def write(c: Cursor) -> None:
        for mid, name, mcc, fee_bp, first in MERCHANTS:
            c.execute(
                "INSERT INTO merchants (mid, name, mcc, fee_bp, status, permitted, updated_at)"
                " VALUES (?, ?, ?, ?, 'active', '', ?) ON CONFLICT (mid) DO NOTHING",
                (mid, name, mcc, fee_bp, ts),
            )
            c.executemany(
                "INSERT INTO terminals (tid, mid, status, tmk_lmk, updated_at)"
                " VALUES (?, ?, 'active', ?, ?) ON CONFLICT (tid) DO NOTHING",
                [(f"{first + i:08d}", mid, tmk_lmk, ts) for i in range(n_terms)],
            )
            c.execute(
                "INSERT INTO payment_methods (mid, method, updated_at) VALUES (?, 'bankcard', ?)"
                " ON CONFLICT (mid, method) DO NOTHING",
                (mid, ts),
            )
        c.executemany(
            "INSERT INTO cards (card_id, masked_pan, bin, expiry, status, pvv, pvki,"
            " pin_failures, updated_at) VALUES (?, ?, ?, ?, 'active', ?, 1, 0, ?)"
            " ON CONFLICT (card_id) DO NOTHING",
            [
                (str(card_account_id(demo_pan(s), pan_key)), mask_pan(demo_pan(s)), DEMO_BIN,
                 demo_expiry(s), pvvs[s], ts)
                for s in range(1, cfg.demo.cards + 1)
            ],
        )  # fmt: skip
        c.execute(
            "INSERT INTO issuer_keys (bin, pvk_lmk) VALUES (?, ?) ON CONFLICT (bin) DO NOTHING",
            (DEMO_BIN, pvk),
        )

    await store.db.run(write)

    # Ledger accounts, and each card funded from the suspense account.
    suspense = suspense_account_id(currency)
    base = [
        CreateAccount(suspense, AccountKind.SUSPENSE, currency, "demo funding"),
        CreateAccount(fee_account_id(currency), AccountKind.FEE_INCOME, currency, "acquirer"),
    ]
    base += [
        CreateAccount(merchant_account_id(mid), AccountKind.MERCHANT, currency, mid)
        for mid, *_ in MERCHANTS
    ]
    await ledger.submit(base)
    chunk = 1000
    for start in range(1, cfg.demo.cards + 1, chunk):
        ops: list = []
        for seq in range(start, min(start + chunk, cfg.demo.cards + 1)):
            card = card_account_id(demo_pan(seq), pan_key)
            ops.append(CreateAccount(card, AccountKind.CARDHOLDER, currency, f"card {seq}"))
            ops.append(
                Transfer(transfer_id("DEMOFUND", 0, seq, "funding"), suspense, card,
                         demo_balance(seq), "funding")
            )  # fmt: skip
        results = await ledger.submit(ops)
        bad = [r for r in results if not r.ok]
        if bad:
            raise RuntimeError(f"demo funding refused by the ledger: {bad[0].code}")
    await store.set_switch_key(MARKER, "done")
    await bump_version(store.db)
    log.info("demo data ready: %d terminals, %d cards", 2 * n_terms, cfg.demo.cards)
