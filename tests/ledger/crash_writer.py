"""A ledger client for the crash test: prints each acknowledged transfer id, forever.

Run as `python -m tests.ledger.crash_writer sqlite DATA_DIR` or
`python -m tests.ledger.crash_writer postgres DSN SCHEMA`; the test kills it
with SIGKILL and checks that every id printed survived.
"""

from __future__ import annotations

import sys

import trio

from switchd.ledger import (
    AccountKind,
    CreateAccount,
    LedgerConfig,
    PostgresConfig,
    Transfer,
    open_ledger,
)

CARD, MERCHANT, SUSPENSE = 1, 2, 3
TASKS = 64


def config_from(argv: list[str]) -> LedgerConfig:
    if argv[0] == "sqlite":
        return LedgerConfig(data_dir=argv[1])
    return LedgerConfig(backend="postgres",
                        postgres=PostgresConfig(dsn=argv[1], schema=argv[2], pool_max=2))


async def main(argv: list[str]) -> None:
    async with open_ledger(config_from(argv)) as ledger:
        setup = await ledger.submit([
            CreateAccount(CARD, AccountKind.CARDHOLDER, "156"),
            CreateAccount(MERCHANT, AccountKind.MERCHANT, "156"),
            CreateAccount(SUSPENSE, AccountKind.SUSPENSE, "156"),
            Transfer(10, SUSPENSE, CARD, 10**12, "deposit"),
        ])
        assert all(r.ok for r in setup), setup
        out = sys.stdout

        async def stream(task: int) -> None:
            n = 0
            while True:
                tid = 1_000_000 * (task + 1) + n
                n += 1
                result = await ledger.execute(Transfer(tid, CARD, MERCHANT, 1 + tid % 97, "sale"))
                if result.ok:
                    out.write(f"{tid}\n")
                    out.flush()

        async with trio.open_nursery() as nursery:
            for task in range(TASKS):
                nursery.start_soon(stream, task)


if __name__ == "__main__":
    trio.run(main, sys.argv[1:])
