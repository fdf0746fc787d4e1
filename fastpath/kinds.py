"""Transaction kinds the classifier yields (PROTOCOL.md §3)."""

from __future__ import annotations

from enum import IntEnum


class Kind(IntEnum):
    UNSUPPORTED = 0
    BALANCE = 1
    PREAUTH = 2
    PREAUTH_CANCEL = 3
    COMPLETION = 4
    COMPLETION_ADVICE = 5
    COMPLETION_VOID = 6
    SALE = 7
    VOID = 8
    REFUND = 9
    REVERSAL = 10
    SIGN_ON = 11
    SIGN_OFF = 12
    ECHO = 13
    SETTLEMENT = 14
    BATCH_UPLOAD = 15
    PARAM_DOWNLOAD = 16


#: Each kind's name as logs, the journal and metric labels write it ("sale"):
#: a dict lookup, where an enum member's .name.lower() costs a descriptor call and a copy.
NAMES = {k: k.name.lower() for k in Kind}

#: Kinds a terminal may reverse with an 0400 (the table's "reversible" column).
REVERSIBLE = frozenset(
    {Kind.PREAUTH, Kind.PREAUTH_CANCEL, Kind.COMPLETION, Kind.COMPLETION_VOID, Kind.SALE, Kind.VOID}
)
#: Kinds that move money and so carry a card, an amount and a MAC.
FINANCIAL = frozenset(
    {
        Kind.BALANCE,
        Kind.PREAUTH,
        Kind.PREAUTH_CANCEL,
        Kind.COMPLETION,
        Kind.COMPLETION_ADVICE,
        Kind.COMPLETION_VOID,
        Kind.SALE,
        Kind.VOID,
        Kind.REFUND,
    }
)
