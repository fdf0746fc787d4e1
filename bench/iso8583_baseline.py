"""pyiso8583 configured with the CUP POS field set (PROTOCOL.md §2).

An independent codec: the differential tests check fastpath against it, and
bench/codec.py measures fastpath against it as the baseline.
"""

from __future__ import annotations

from typing import Any

from fastpath.codec import FIELD_SPECS

_LEN_TYPE = {"fixed": 0, "LLVAR": 1, "LLLVAR": 2}


def cup_spec() -> dict[str, dict[str, Any]]:
    spec: dict[str, dict[str, Any]] = {
        "h": {"data_enc": "b", "len_enc": "b", "len_type": 0, "max_len": 0, "desc": "none"},
        "t": {"data_enc": "b", "len_enc": "b", "len_type": 0, "max_len": 2, "desc": "MTI, BCD"},
        "p": {"data_enc": "b", "len_enc": "b", "len_type": 0, "max_len": 8, "desc": "bitmap"},
    }
    for field, (fmt, kind, max_len) in FIELD_SPECS.items():
        entry: dict[str, Any] = {
            "len_enc": "bcd",
            "len_type": _LEN_TYPE[kind],
            "max_len": max_len,
            "desc": f"field {field}",
        }
        if fmt in ("n", "z"):
            entry["data_enc"] = "b"
            entry["len_count"] = "nibbles"
            # Odd fixed numerics are right-aligned except field 22; variable
            # ones are left-aligned: the pad nibble goes where we put it.
            if kind == "fixed" and field != 22:
                entry["left_pad"] = "0"
            else:
                entry["right_pad"] = "0"
        elif fmt == "an":
            entry["data_enc"] = "ascii"
        else:
            entry["data_enc"] = "b"
        spec[str(field)] = entry
    return spec
