"""The classifier's table and its answers for everything outside it."""

from __future__ import annotations

import pytest

from fastpath import requests as rq
from fastpath.classify import classify
from fastpath.codec import decode, encode
from fastpath.kinds import Kind

T = rq.Terminal("10000001", "898100012340001", "000007")
CARD = rq.Card("6228480000000000018", "3012")
ORIG = rq.Original(batch="000007", stan="000011", date="1123")


def kind_of(mti: str, fields: dict[int, object]) -> tuple[object, object, object]:
    return classify(decode(encode(mti, fields)))


@pytest.mark.parametrize(
    ("mti", "proc", "cond", "type_code", "kind"),
    [
        ("0200", "310000", "00", "01", Kind.BALANCE),
        ("0100", "030000", "06", "10", Kind.PREAUTH),
        ("0100", "200000", "06", "11", Kind.PREAUTH_CANCEL),
        ("0200", "000000", "06", "20", Kind.COMPLETION),
        ("0220", "000000", "06", "24", Kind.COMPLETION_ADVICE),
        ("0200", "200000", "06", "21", Kind.COMPLETION_VOID),
        ("0200", "000000", "00", "22", Kind.SALE),
        ("0200", "200000", "00", "23", Kind.VOID),
        ("0220", "200000", "00", "25", Kind.REFUND),
        ("0200", "001000", "00", "22", Kind.SALE),  # only F3[0:2] counts
    ],
)
def test_financial_table(mti: str, proc: str, cond: str, type_code: str, kind: Kind) -> None:
    fields = {3: proc, 25: cond, 60: type_code + "000007000"}
    assert kind_of(mti, fields) == (kind, None, None)


@pytest.mark.parametrize(
    ("mti", "netcode", "kind"),
    [
        ("0800", "001", Kind.SIGN_ON),
        ("0800", "003", Kind.SIGN_ON),
        ("0800", "004", Kind.SIGN_ON),
        ("0800", "360", Kind.PARAM_DOWNLOAD),
        ("0820", "002", Kind.SIGN_OFF),
        ("0820", "301", Kind.ECHO),
        ("0500", "201", Kind.SETTLEMENT),
        *[("0320", f"20{i}", Kind.BATCH_UPLOAD) for i in range(1, 8)],
    ],
)
def test_management_table(mti: str, netcode: str, kind: Kind) -> None:
    assert kind_of(mti, {60: "00000007" + netcode}) == (kind, None, None)


@pytest.mark.parametrize(
    "original",
    [
        rq.sale(T, CARD, "000001", 100),
        rq.void(T, CARD, "000002", 100, ORIG),
        rq.preauth(T, CARD, "000003", 100),
        rq.preauth_cancel(T, CARD, "000004", 100, ORIG),
        rq.completion(T, CARD, "000005", 100, ORIG),
        rq.completion_void(T, CARD, "000006", 100, ORIG),
    ],
)
def test_reversal_names_what_it_reverses(original: tuple[str, dict[int, object]]) -> None:
    expected = classify(decode(encode(*original)))[0]
    assert kind_of(*rq.reversal(original[1])) == (Kind.REVERSAL, expected, None)


@pytest.mark.parametrize(
    "original",
    [
        rq.balance(T, CARD, "000001"),
        rq.refund(T, CARD, "000002", 100, ORIG),
        rq.completion_advice(T, CARD, "000003", 100, ORIG),
    ],
)
def test_reversal_of_an_irreversible_kind_is_invalid(
    original: tuple[str, dict[int, object]],
) -> None:
    assert kind_of(*rq.reversal(original[1])) == (Kind.UNSUPPORTED, None, "12")


@pytest.mark.parametrize(
    ("mti", "fields", "code"),
    [
        ("0200", {25: "00", 60: "22000007000"}, "30"),  # no F3
        ("0200", {3: "000000", 60: "22000007000"}, "30"),  # no F25
        ("0200", {3: "000000", 25: "00"}, "30"),  # no F60
        ("0800", {11: "000001"}, "30"),
        ("0800", {60: "00000007"}, "30"),  # 60.3 missing
        ("0200", {3: "000000", 25: "00", 60: "36000007000"}, "40"),  # 60.1 not in the table
        ("0200", {3: "310000", 25: "00", 60: "22000007000"}, "40"),  # F3 disagrees with 60.1
        ("0200", {3: "000000", 25: "06", 60: "22000007000"}, "40"),  # F25 disagrees
        ("0100", {3: "000000", 25: "00", 60: "22000007000"}, "40"),  # MTI disagrees
        ("0800", {60: "00000007999"}, "40"),
        ("0820", {60: "00000007001"}, "40"),
        ("0210", {3: "000000", 25: "00", 60: "22000007000"}, "12"),  # a response MTI
        ("0900", {}, "12"),
    ],
)
def test_everything_else_is_unsupported_with_a_code(
    mti: str, fields: dict[int, object], code: str
) -> None:
    assert kind_of(mti, fields) == (Kind.UNSUPPORTED, None, code)
