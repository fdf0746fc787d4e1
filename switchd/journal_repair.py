"""Journal rows lost in a crash, rebuilt from the ledger at start-up.

The journal is written up to ``journal.LINGER_S`` after the answer; a process
killed in between (SIGKILL, OOM, power cut) loses those rows, while their
money is in the ledger, committed before the terminal was answered. Money
does not need them (money.py falls back to the ledger), but the admin API
reads the journal: transaction search and the ERP's payment lookup by RRN
would miss those transactions for good. So before any terminal is served
(daemon.py; with ``--workers N`` in the supervisor's preparation, and in a
worker the supervisor starts in place of one that died) every
approved request the ledger committed recently and the journal lacks gets a
row rebuilt from its leg 0: rc 00, its kind, amount, masked PAN, created_at,
and the RRN and auth code derived from its identity, as the answer carried.

Window: transfers since the newest journal row (or now, if that is earlier)
less ``MARGIN_S``, or the last ``EMPTY_JOURNAL_WINDOW_S`` when the journal is
empty. Lost rows are the newest ones: those answered after the dead
process's last journal write. The margin covers what makes them older than
the newest row written: another worker's writer, which went on writing a
little longer (each worker lingers and retries on its own), and retries with
backoff (up to 5 s each). It does not cover rows dropped long before the
crash by a journal whose database failed for minutes (journal.MAX_QUEUED;
logged as errors when it happens). A fixed "last hour" was the alternative:
simpler, but at a busy switch's rates it reads millions of transfers on
every start, to find the few lost in the last 50 ms; and it misses a crash
followed by more than an hour of downtime, which this window does not.
Both reads use indexes only (loose index scans over the merchants, see
``queries.answered_since``), so the cost is that of the rows in the window.

A rebuilt row has no answer bytes: its ``response`` is empty, which marks it
(``journal.Entry.repaired``). Duplicate checks and originals' look-ups treat
it as absent (the request is processed afresh, and the ledger answers a
repeat as the duplicate it is, with the same RRN, posting nothing), and the
journal's writer replaces it with a real answer should one arrive. No
schema change: the column exists and no real answer is empty.

What is not rebuilt: declines (the ledger keeps no wire identity for them),
a 0400 whose original never arrived (its tombstone is no transfer), and a
request whose leg 0 a 0400 of the same STAN has since undone, since its
answer may not have been 00 (the switch files its own undo of a late or
unencodable approval, answered 98 or 96, as that 0400); the 0400's own row
is rebuilt. A completion advice is rebuilt as "completion" (the ledger files
both under that kind).
"""

from __future__ import annotations

import logging

from switchd import codes, store
from switchd.context import auth_code_of, rrn_of
from switchd.db import Cursor, Database
from switchd.journal import Entry, _row
from switchd.ledger import AnsweredRequest, Ledger
from switchd.ledger.model import REVERSAL_KIND
from switchd.money import LEDGER_KIND

log = logging.getLogger("switchd.journal")

#: How far before the newest journal row the ledger is read (see above).
MARGIN_S = 60.0
#: The window when the journal has no row at all.
EMPTY_JOURNAL_WINDOW_S = 3600.0
#: Keys per existence check: 4 parameters each, well below SQLite's limit.
CHECK_CHUNK = 200
#: The ledger kinds that are terminal requests the journal records.
_KINDS = frozenset(LEDGER_KIND.values())

Key = tuple[str, int, int, bool]

#: The newest journal row, by a loose index scan over journal_mid_time (one
#: seek per merchant): MAX(created_at) alone has no index and reads the table.
_NEWEST = (
    "WITH RECURSIVE m(mid) AS ("
    " SELECT MIN(mid) FROM journal"
    " UNION ALL"
    " SELECT (SELECT MIN(mid) FROM journal WHERE mid > m.mid) FROM m WHERE m.mid IS NOT NULL)"
    " SELECT MAX((SELECT MAX(created_at) FROM journal j WHERE j.mid = m.mid)) FROM m"
)

#: Never overwrites: a row written since the check (another node's) stays.
_INSERT = (
    "INSERT INTO journal (tid, batch, stan, reversal, kind, mid, digest, rc, amount, masked_pan,"
    " rrn, auth_code, orig_batch, orig_stan, response, created_at)"
    f" VALUES ({','.join('?' * 16)}) ON CONFLICT (tid, batch, stan, reversal) DO NOTHING"
)


async def repair(db: Database, ledger: Ledger, now_us: int | None = None) -> int:
    """Rebuild the journal rows of recent approvals the journal lacks; how many."""
    since = await window_start(db, store.now_us() if now_us is None else now_us)
    answered = [
        a for a in await ledger.answered_since(since)
        if a.kind in _KINDS and (a.kind == REVERSAL_KIND or not a.undone_by_reversal)
    ]  # fmt: skip
    present = await _journaled(db, [_key(a) for a in answered])
    rows = [_row(_entry(a)) for a in answered if _key(a) not in present]
    if rows:

        def insert(c: Cursor) -> None:
            c.executemany(_INSERT, rows)

        await db.run(insert)
        log.info("journal: %d rows lost in a crash rebuilt from the ledger (transfers since %d)",
                 len(rows), since)  # fmt: skip
    return len(rows)


async def window_start(db: Database, now_us: int) -> int:
    """Where the ledger is read from, in microseconds since the epoch."""
    row = await db.fetchone(_NEWEST)
    newest = row[0] if row else None
    if newest is None:
        return now_us - int(EMPTY_JOURNAL_WINDOW_S * 1e6)
    # A clock set back since the newest row must not push the window forward.
    return min(int(newest), now_us) - int(MARGIN_S * 1e6)


def _key(a: AnsweredRequest) -> Key:
    return (a.terminal_id, a.batch, a.stan, a.kind == REVERSAL_KIND)


async def _journaled(db: Database, keys: list[Key]) -> set[Key]:
    """Which of `keys` the journal has a row for (by its primary key)."""
    found: set[Key] = set()
    for i in range(0, len(keys), CHECK_CHUNK):
        chunk = keys[i : i + CHECK_CHUNK]
        values = ",".join(["(?, ?, ?, ?)"] * len(chunk))
        # The casts type the VALUES columns for PostgreSQL (as journal._fetch).
        rows = await db.fetchall(
            "SELECT journal.tid, journal.batch, journal.stan, journal.reversal"
            f" FROM (VALUES {values}) AS k JOIN journal"
            " ON journal.tid = CAST(k.column1 AS TEXT)"
            " AND journal.batch = CAST(k.column2 AS INTEGER)"
            " AND journal.stan = CAST(k.column3 AS INTEGER)"
            " AND journal.reversal = CAST(k.column4 AS INTEGER)",
            [v for tid, batch, stan, rev in chunk for v in (tid, batch, stan, int(rev))],
        )
        found.update((r[0], r[1], r[2], bool(r[3])) for r in rows)
    return found


def _entry(a: AnsweredRequest) -> Entry:
    reversal = a.kind == REVERSAL_KIND
    return Entry(
        tid=a.terminal_id,
        batch=a.batch,
        stan=a.stan,
        reversal=reversal,
        kind=a.kind,
        mid=a.merchant_id,
        digest="",  # unknown; unused, as a repaired row is never replayed
        rc=codes.APPROVED,
        amount=a.amount,
        masked_pan=a.masked_pan,
        rrn=rrn_of(a.terminal_id, a.batch, a.stan, reversal),
        # As processor._entry journals every approval (a 0400's too, though its answer has no F38).
        auth_code=auth_code_of(a.terminal_id, a.batch, a.stan),
        orig_batch=None if reversal else a.orig_batch,
        orig_stan=None if reversal else a.orig_stan,
        response=b"",  # the mark of a repaired row: see Entry.repaired
        created_at=a.created_at_us,
    )
