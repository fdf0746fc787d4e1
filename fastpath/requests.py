"""What a CUP-style terminal sends, per transaction kind (PROTOCOL.md §3).

Builders return ``(mti, fields)`` for :func:`fastpath.codec.encode_frame`;
the terminal simulator, the load generator and the tests share them so the
field sets are written down once. Clear PINs appear only here, turned into
an encrypted PIN block at once, as a terminal's PIN pad does.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastpath.crypto import DesKey, encrypt_pin_block

#: TPDU to the bank-card application 0001 from terminal address 0000.
DEFAULT_TPDU = bytes.fromhex("6000010000")
#: Magstripe financial (60), software version 31, status normal, sub-version 000000.
DEFAULT_HEADER = bytes.fromhex("603100000000")

Fields = dict[int, object]


@dataclass(frozen=True, slots=True)
class Card:
    pan: str
    expiry: str  # YYMM
    service_code: str = "101"
    sequence: str = "001"

    @property
    def track2(self) -> str:
        return f"{self.pan}={self.expiry}{self.service_code}0000000000"


@dataclass(frozen=True, slots=True)
class Terminal:
    tid: str
    mid: str
    batch: str = "000001"
    operator: str = "01 "


@dataclass(frozen=True, slots=True)
class Original:
    """What a void, refund, completion or cancel quotes of its original."""

    batch: str
    stan: str
    date: str = ""  # MMDD, refunds and pre-auth references
    rrn: str = ""
    auth_code: str = ""


def _f60(type_code: str, batch: str, netcode: str = "000") -> str:
    return f"{type_code}{batch}{netcode}"


def _card_fields(card: Card, pin: str | None, pik: bytes | DesKey | None) -> Fields:
    fields: Fields = {14: card.expiry, 22: "021" if pin else "022", 23: card.sequence}
    fields[35] = card.track2
    fields[26] = "12"
    if pin is not None:
        if pik is None:
            raise ValueError("a PIN needs the PIK to encrypt it")
        fields[52] = encrypt_pin_block(pik, pin, card.pan)
        fields[53] = "2600000000000000"  # format with PAN, 3DES, no track encryption
    else:
        fields[53] = "0600000000000000"
    return fields


def sign_on(t: Terminal, stan: str, netcode: str = "003") -> tuple[str, Fields]:
    return "0800", {
        11: stan,
        41: t.tid,
        42: t.mid,
        60: _f60("00", t.batch, netcode),
        63: t.operator,
    }


def sign_off(t: Terminal, stan: str) -> tuple[str, Fields]:
    return "0820", {11: stan, 41: t.tid, 42: t.mid, 60: _f60("00", t.batch, "002")}


def echo_test(t: Terminal, stan: str) -> tuple[str, Fields]:
    return "0820", {11: stan, 41: t.tid, 42: t.mid, 60: _f60("00", t.batch, "301")}


def parameter_download(t: Terminal, stan: str) -> tuple[str, Fields]:
    return "0800", {11: stan, 41: t.tid, 42: t.mid, 60: _f60("00", t.batch, "360")}


def _financial(
    t: Terminal,
    card: Card,
    stan: str,
    proc: str,
    cond: str,
    type_code: str,
    amount: int | None,
    pin: str | None = None,
    pik: bytes | DesKey | None = None,
) -> Fields:
    fields: Fields = {3: proc, 11: stan, 25: cond, 41: t.tid, 42: t.mid, 49: "156"}
    if amount is not None:
        fields[4] = amount
    fields.update(_card_fields(card, pin, pik))
    fields[60] = _f60(type_code, t.batch)
    return fields


def balance(
    t: Terminal, card: Card, stan: str, pin: str | None = None, pik: bytes | DesKey | None = None
) -> tuple[str, Fields]:
    return "0200", _financial(t, card, stan, "310000", "00", "01", None, pin, pik)


def sale(
    t: Terminal,
    card: Card,
    stan: str,
    amount: int,
    pin: str | None = None,
    pik: bytes | DesKey | None = None,
) -> tuple[str, Fields]:
    return "0200", _financial(t, card, stan, "000000", "00", "22", amount, pin, pik)


def preauth(
    t: Terminal,
    card: Card,
    stan: str,
    amount: int,
    pin: str | None = None,
    pik: bytes | DesKey | None = None,
) -> tuple[str, Fields]:
    return "0100", _financial(t, card, stan, "030000", "06", "10", amount, pin, pik)


def _referencing(fields: Fields, orig: Original, with_date: bool) -> Fields:
    if orig.rrn:
        fields[37] = orig.rrn
    if orig.auth_code:
        fields[38] = orig.auth_code
    fields[61] = orig.batch + orig.stan + (orig.date if with_date else "")
    return fields


#: Requests that quote an original: MTI, F3, F25, 60.1, and whether F61
#: carries the original date (PROTOCOL.md §3).
REFERENCING = {
    "void": ("0200", "200000", "00", "23", False),
    "refund": ("0220", "200000", "00", "25", True),
    "preauth_cancel": ("0100", "200000", "06", "11", True),
    "completion": ("0200", "000000", "06", "20", True),
    "completion_advice": ("0220", "000000", "06", "24", True),
    "completion_void": ("0200", "200000", "06", "21", False),
}


def referencing(
    kind: str, t: Terminal, card: Card, stan: str, amount: int, orig: Original
) -> tuple[str, Fields]:
    mti, proc, cond, type_code, with_date = REFERENCING[kind]
    fields = _financial(t, card, stan, proc, cond, type_code, amount)
    return mti, _referencing(fields, orig, with_date)


def void(t: Terminal, card: Card, stan: str, amount: int, orig: Original) -> tuple[str, Fields]:
    return referencing("void", t, card, stan, amount, orig)


def refund(t: Terminal, card: Card, stan: str, amount: int, orig: Original) -> tuple[str, Fields]:
    return referencing("refund", t, card, stan, amount, orig)


def preauth_cancel(t: Terminal, card: Card, stan: str, amount: int, orig: Original
                   ) -> tuple[str, Fields]:  # fmt: skip
    return referencing("preauth_cancel", t, card, stan, amount, orig)


def completion(t: Terminal, card: Card, stan: str, amount: int, orig: Original
               ) -> tuple[str, Fields]:  # fmt: skip
    return referencing("completion", t, card, stan, amount, orig)


def completion_advice(t: Terminal, card: Card, stan: str, amount: int, orig: Original
                      ) -> tuple[str, Fields]:  # fmt: skip
    return referencing("completion_advice", t, card, stan, amount, orig)


def completion_void(t: Terminal, card: Card, stan: str, amount: int, orig: Original
                    ) -> tuple[str, Fields]:  # fmt: skip
    return referencing("completion_void", t, card, stan, amount, orig)


#: Fields of the original request a reversal repeats (PROTOCOL.md §3).
REVERSAL_FIELDS = (2, 3, 4, 11, 14, 22, 23, 25, 35, 41, 42, 49, 60, 61)


def reversal(original: Fields, reason: str = "98") -> tuple[str, Fields]:
    """The 0400 for an original request; reason in F39 (98, 96, A0, 06)."""
    fields = {f: original[f] for f in REVERSAL_FIELDS if f in original}
    fields[39] = reason
    return "0400", fields


def settlement_totals(
    debit_amount: int, debit_count: int, credit_amount: int, credit_count: int, code: int = 0
) -> str:
    """One part of field 48: amount n12, count n3, amount n12, count n3, code n1."""
    return f"{debit_amount:012d}{debit_count:03d}{credit_amount:012d}{credit_count:03d}{code}"


def settlement(
    t: Terminal, stan: str, domestic: str, foreign: str | None = None
) -> tuple[str, Fields]:
    foreign = foreign if foreign is not None else settlement_totals(0, 0, 0, 0)
    return "0500", {
        11: stan,
        41: t.tid,
        42: t.mid,
        48: domestic + foreign,
        49: "156",
        60: _f60("00", t.batch, "201"),
        63: t.operator,
    }


def batch_upload(t: Terminal, stan: str, records: str, netcode: str = "201") -> tuple[str, Fields]:
    """An 0320; ``records`` is field 48's digits, netcode 201-207 (207 ends it)."""
    return "0320", {11: stan, 41: t.tid, 42: t.mid, 48: records, 60: _f60("00", t.batch, netcode)}
