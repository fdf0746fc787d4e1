"""Codec micro-benchmark: fastpath against pyiso8583 on the same messages.

    python -m bench.codec [--json] [--number N]

Operations, each timed on an 0200 sale with PIN block and track 2 and its
0210 response:
- decode: fastpath ``decode_frame`` vs ``iso8583.decode`` (CUP field specs);
- decode + MAC verify (+ classify for fastpath): the baseline verifies with
  a pycryptodome cipher object built once and cached, as a careful pure
  Python switch would;
- encode of the 0210 response + MAC.
It also times the CUP MAC alone with our C DES against the same MAC over a
cached pycryptodome cipher: the measurement behind doing DES in C.
Figures are the best of several repeats, in microseconds per operation.
"""

from __future__ import annotations

import argparse
import sys
import timeit
from collections.abc import Callable

import iso8583
import orjson
from Crypto.Cipher import DES3

from bench.iso8583_baseline import cup_spec
from fastpath import requests as rq
from fastpath.classify import classify
from fastpath.codec import build_response, decode_frame, encode_frame
from fastpath.crypto import DesKey, cup_mac

MAK = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")
PIK = bytes.fromhex("89ABCDEF0123456776543210FEDCBA98")
T = rq.Terminal("10000001", "898100012340001", "000007")
CARD = rq.Card("6228480000000000018", "3012")
RESPONSE_FIELDS = {
    12: "101010",
    13: "1123",
    15: "1123",
    32: "01020000",
    37: "000000000001",
    38: "123456",
    39: "00",
}
ECHO = (2, 3, 4, 11, 25, 41, 42, 49, 60)


def baseline_mac(cipher: object, mab: bytes) -> bytes:
    """The CUP MAC in Python over a cached pycryptodome 3DES object."""
    padded = mab + bytes(-len(mab) % 8)
    r = 0
    for i in range(0, len(padded), 8):
        r ^= int.from_bytes(padded[i : i + 8], "big")
    hexr = r.to_bytes(8, "big").hex().upper().encode()
    e1 = cipher.encrypt(hexr[:8])  # type: ignore[attr-defined]
    e2 = cipher.encrypt(
        (int.from_bytes(e1, "big") ^ int.from_bytes(hexr[8:], "big")).to_bytes(8, "big")
    )  # type: ignore[attr-defined]
    return e2.hex().upper()[:8].encode()


def best_us(fn: Callable[[], object], number: int, repeat: int = 5) -> float:
    return min(timeit.repeat(fn, number=number, repeat=repeat)) / number * 1e6


def run(number: int) -> dict[str, object]:
    spec = cup_spec()
    key = DesKey(MAK)
    cipher = DES3.new(MAK, DES3.MODE_ECB)
    frame = encode_frame(
        rq.DEFAULT_TPDU, rq.DEFAULT_HEADER, *rq.sale(T, CARD, "000012", 12345, "123456", PIK), key
    )
    body = frame[2:]
    iso = body[11:]
    req = decode_frame(body)

    def fp_decode_mac() -> None:
        m = decode_frame(body)
        if not m.verify_mac(key):
            raise AssertionError("MAC")
        classify(m)

    def py_decode() -> None:
        iso8583.decode(iso, spec)

    def py_decode_mac() -> None:
        doc, _ = iso8583.decode(iso, spec)
        if baseline_mac(cipher, iso[:-8]) != bytes.fromhex(doc["64"]):
            raise AssertionError("MAC")

    def py_encode_mac() -> None:
        doc, _ = iso8583.decode(iso, spec)  # the request, decoded already in a real switch
        out = {"t": "0210", **{str(f): doc[str(f)] for f in ECHO if str(f) in doc}}
        out.update({str(f): v for f, v in RESPONSE_FIELDS.items()})
        out["64"] = "00" * 8
        raw, _ = iso8583.encode(out, spec)
        raw[-8:] = baseline_mac(cipher, bytes(raw[:-8]))
        bytes(raw)

    py_decoded, _ = iso8583.decode(iso, spec)

    def py_encode_mac_only() -> None:
        out = {"t": "0210", **{str(f): py_decoded[str(f)] for f in ECHO if str(f) in py_decoded}}
        out.update({str(f): v for f, v in RESPONSE_FIELDS.items()})
        out["64"] = "00" * 8
        raw, _ = iso8583.encode(out, spec)
        raw[-8:] = baseline_mac(cipher, bytes(raw[:-8]))

    # Sanity: both sides compute the same MAC and produce equivalent responses.
    assert baseline_mac(cipher, iso[:-8]) == cup_mac(key, iso[:-8]) == req.mac
    ours = decode_frame(build_response(req, "0210", RESPONSE_FIELDS, key)[2:])
    assert ours.verify_mac(key)

    slow = max(number // 20, 1)
    block = bytes(8)
    fp = {
        "decode": best_us(lambda: decode_frame(body), number),
        "decode_mac": best_us(fp_decode_mac, number),
        "encode_mac": best_us(lambda: build_response(req, "0210", RESPONSE_FIELDS, key), number),
        "mac_only": best_us(lambda: cup_mac(key, iso[:-8]), number),
        "tdes_block": best_us(lambda: key.encrypt(block), number),
    }
    py = {
        "decode": best_us(py_decode, slow),
        "decode_mac": best_us(py_decode_mac, slow),
        "encode_mac": best_us(py_encode_mac_only, slow),
        "mac_only": best_us(lambda: baseline_mac(cipher, iso[:-8]), slow),
        "tdes_block": best_us(lambda: cipher.encrypt(block), number),
    }
    return {
        "message_bytes": len(iso),
        "frame_bytes": len(frame),
        "fastpath_us": fp,
        "pyiso8583_us": py,
        "decode_speedup": py["decode"] / fp["decode"],
        "decode_mac_speedup": py["decode_mac"] / fp["decode_mac"],
        "encode_mac_speedup": py["encode_mac"] / fp["encode_mac"],
        "c_des_mac_vs_cached_pycryptodome": py["mac_only"] / fp["mac_only"],
        "c_des_block_vs_cached_pycryptodome": py["tdes_block"] / fp["tdes_block"],
        "budget_us": {"decode_mac_classify": 3.0, "encode_mac": 3.0},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.codec", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--number", type=int, default=100_000, help="iterations per repeat (fastpath)"
    )
    args = parser.parse_args(argv)
    r = run(args.number)
    if args.json:
        sys.stdout.write(orjson.dumps(r, option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    fp, py = r["fastpath_us"], r["pyiso8583_us"]
    size = f"{r['message_bytes']} bytes of ISO ({r['frame_bytes']} framed)"
    print(f"0200 sale with PIN and track 2: {size}")
    print(f"{'operation':<34}{'fastpath µs':>12}{'pyiso8583 µs':>14}{'speedup':>10}")
    rows = [
        ("decode", "decode"),
        ("decode + MAC verify (+ classify)", "decode_mac"),
        ("encode 0210 + MAC", "encode_mac"),
        ("CUP MAC alone (C DES vs cached)", "mac_only"),
        ("one 3DES block (C vs cached)", "tdes_block"),
    ]
    for label, k in rows:
        print(f"{label:<34}{fp[k]:>12.2f}{py[k]:>14.2f}{py[k] / fp[k]:>9.1f}x")
    print("budget: decode + MAC + classify ≤ 3 µs, encode + MAC ≤ 3 µs, speedups ≥ 20x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
