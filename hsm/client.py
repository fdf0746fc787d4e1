"""The typed HSM API the switch calls, over the pool and the sans-I/O codec.

    async with open_hsm_client(["127.0.0.1:1500"]) as hsm:
        keys = await hsm.generate_working_keys(tmk_under_lmk)
        ok = await hsm.verify_pin_pvv(tpk, pvk, pin_block, account12, "1", "1234")

Keys are passed and returned as Thales key fields (e.g. "U" + 32 hex digits
under the LMK); the switch never sees a clear key or PIN through this API.
Errors: `HsmCommandError` (the HSM refused the command, `.code` is the
Thales error code), `HsmUnavailable` (no HSM answered), ValueError (a field
the caller gave has the wrong size).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial

import trio

from hsm import codec
from hsm.codec import Diagnostics, ExportedKey, GeneratedKey, ImportedKey, TranslatedPin
from hsm.pool import Address, HsmPool, open_hsm_pool

# Key type codes (THALES.md §2.2) for the keys the switch handles.
ZMK = "000"
ZPK = "001"
TMK = TPK = PVK = "002"
TAK = "003"
ZAK = "008"
DEK = "00B"

# A0's ZMK/TMK flag (see hsm/handlers_keys.py for the choice of `1`).
EXPORT_UNDER_ZMK = "0"
EXPORT_UNDER_TMK = "1"


# The reply decoders of the verify commands (DC on every PIN sale), made once
# rather than per call.
_DECODE_DC = codec.verify_decoder("DC")
_DECODE_EC = codec.verify_decoder("EC")
_DECODE_M8 = codec.verify_decoder("M8")


@dataclass(frozen=True, slots=True)
class WorkingKeys:
    """The keys of a terminal sign-on, each under the LMK, under the TMK, and its KCV."""

    pik: GeneratedKey  # TPK, type 002
    mak: GeneratedKey  # TAK, type 003
    tdk: GeneratedKey | None  # DEK, type 00B, when asked for


class HsmClient:
    def __init__(self, pool: HsmPool) -> None:
        self.pool = pool

    # -- diagnostics -------------------------------------------------------------

    async def diagnostics(self) -> Diagnostics:
        return await self.pool.request(codec.nc(), codec.decode_nc)

    async def echo(self, data: bytes) -> bytes:
        return await self.pool.request(codec.b2(data), codec.decode_b2)

    # -- keys --------------------------------------------------------------------

    async def generate_key(
        self,
        key_type: str,
        *,
        scheme: str = "U",
        export_under: str | None = None,
        export_flag: str = EXPORT_UNDER_ZMK,
        export_scheme: str = "U",
    ) -> GeneratedKey:
        """A0: a new key under the LMK, and under a ZMK/TMK (`export_under`) if given."""
        body = codec.a0(
            key_type, scheme, export_key=export_under, export_flag=export_flag,
            export_scheme=export_scheme,
        )  # fmt: skip
        return await self.pool.request(body, partial(codec.decode_a0, exported=bool(export_under)))

    async def generate_working_keys(
        self, tmk_under_lmk: str, *, with_tdk: bool = False, export_scheme: str = "X"
    ) -> WorkingKeys:
        """Sign-on: PIK (002), MAK (003) and optionally TDK (00B), each under LMK and TMK.

        The three A0 commands run concurrently (they are independent), so
        sign-on costs one HSM round trip, not three.
        """
        results: dict[str, GeneratedKey] = {}
        failures: list[Exception] = []

        async def one(name: str, key_type: str) -> None:
            # Failures are collected, not raised, so the caller gets the
            # HsmCommandError/HsmUnavailable itself rather than an exception group.
            try:
                results[name] = await self.generate_key(
                    key_type, export_under=tmk_under_lmk, export_flag=EXPORT_UNDER_TMK,
                    export_scheme=export_scheme,
                )  # fmt: skip
            except Exception as exc:
                failures.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(one, "pik", TPK)
            nursery.start_soon(one, "mak", TAK)
            if with_tdk:
                nursery.start_soon(one, "tdk", DEK)
        if failures:
            raise failures[0]
        return WorkingKeys(results["pik"], results["mak"], results.get("tdk"))

    async def key_check_value(
        self, key_type: str, key_under_lmk: str, *, full: bool = False
    ) -> str:
        """BU: the KCV of a stored key, 6H (or 16H with `full`)."""
        body = codec.bu(key_type, key_under_lmk, full=full)
        return await self.pool.request(body, codec.decode_bu)

    async def import_key(
        self, key_type: str, zmk_under_lmk: str, key_under_zmk: str, *, scheme: str = "U"
    ) -> ImportedKey:
        """A6: a key received under a ZMK, re-encrypted under the LMK."""
        body = codec.a6(key_type, zmk_under_lmk, key_under_zmk, scheme)
        return await self.pool.request(body, codec.decode_a6)

    async def export_key(
        self, key_type: str, zmk_under_lmk: str, key_under_lmk: str, *, scheme: str = "U"
    ) -> ExportedKey:
        """A8: a stored key encrypted under a ZMK for a partner."""
        body = codec.a8(key_type, zmk_under_lmk, key_under_lmk, scheme)
        return await self.pool.request(body, codec.decode_a8)

    # -- PIN -----------------------------------------------------------------------

    async def translate_pin(
        self, tpk_under_lmk: str, zpk_under_lmk: str, pin_block: str, account12: str, *,
        src_format: str = "01", dst_format: str = "01", max_pin_length: int = 12,
    ) -> TranslatedPin:  # fmt: skip
        """CA: a terminal's PIN block (under its TPK/PIK) re-encrypted under a zone ZPK."""
        body = codec.ca(
            tpk_under_lmk, zpk_under_lmk, pin_block, account12, src_format=src_format,
            dst_format=dst_format, max_pin_length=max_pin_length,
        )  # fmt: skip
        return await self.pool.request(body, partial(codec.decode_translate, "CA"))

    async def translate_pin_zpk(
        self, src_zpk_under_lmk: str, dst_zpk_under_lmk: str, pin_block: str, account12: str, *,
        src_format: str = "01", dst_format: str = "01", max_pin_length: int = 12,
    ) -> TranslatedPin:  # fmt: skip
        """CC: a PIN block from one zone key to another."""
        body = codec.cc(
            src_zpk_under_lmk, dst_zpk_under_lmk, pin_block, account12, src_format=src_format,
            dst_format=dst_format, max_pin_length=max_pin_length,
        )  # fmt: skip
        return await self.pool.request(body, partial(codec.decode_translate, "CC"))

    async def verify_pin_pvv(
        self, tpk_under_lmk: str, pvk_under_lmk: str, pin_block: str, account12: str,
        pvki: str, pvv: str, *, pin_format: str = "01",
    ) -> bool:  # fmt: skip
        """DC: does the terminal PIN block match the card's Visa PVV? (False = wrong PIN)."""
        body = codec.dc(tpk_under_lmk, pvk_under_lmk, pin_block, account12, pvki, pvv,
                        pin_format=pin_format)  # fmt: skip
        return await self.pool.request(body, _DECODE_DC)

    async def verify_interchange_pin_pvv(
        self, zpk_under_lmk: str, pvk_under_lmk: str, pin_block: str, account12: str,
        pvki: str, pvv: str, *, pin_format: str = "01",
    ) -> bool:  # fmt: skip
        """EC: as verify_pin_pvv for a PIN block under a ZPK."""
        body = codec.ec(zpk_under_lmk, pvk_under_lmk, pin_block, account12, pvki, pvv,
                        pin_format=pin_format)  # fmt: skip
        return await self.pool.request(body, _DECODE_EC)

    async def generate_pvv(
        self, pvk_under_lmk: str, pin_under_lmk: str, account12: str, pvki: str
    ) -> str:
        """DG: the 4-digit Visa PVV of a PIN held under the LMK (card provisioning)."""
        body = codec.dg(pvk_under_lmk, pin_under_lmk, account12, pvki)
        return await self.pool.request(body, codec.decode_dg)

    async def encrypt_pin(self, pin: str, account12: str) -> str:
        """BA: a clear PIN to its form under the LMK (provisioning and tests only)."""
        return await self.pool.request(
            codec.ba(pin, account12), partial(codec.decode_pin_under_lmk, "BA")
        )

    async def pin_to_lmk(
        self, zpk_under_lmk: str, pin_block: str, account12: str, *, pin_format: str = "01"
    ) -> str:
        """JE: a PIN block under a ZPK to the PIN under the LMK."""
        body = codec.je(zpk_under_lmk, pin_block, account12, pin_format=pin_format)
        return await self.pool.request(body, partial(codec.decode_pin_under_lmk, "JE"))

    async def pin_to_zpk(
        self, zpk_under_lmk: str, pin_under_lmk: str, account12: str, *, pin_format: str = "01"
    ) -> str:
        """JG: a PIN under the LMK to a PIN block under a ZPK (16H)."""
        body = codec.jg(zpk_under_lmk, pin_under_lmk, account12, pin_format=pin_format)
        return await self.pool.request(body, codec.decode_jg)

    # -- MAC -----------------------------------------------------------------------

    async def generate_mac(
        self, key_type: str, key_under_lmk: str, data: bytes, *,
        algorithm: int = 3, padding: int = 1, mac_size: int = 16,
    ) -> str:  # fmt: skip
        """M6: ISO 9797-1 MAC (algorithm 1 or 3 = X9.19) with a TAK (003) or ZAK (008)."""
        body = codec.m6(key_type, key_under_lmk, data, algorithm=algorithm, padding=padding,
                        mac_size=mac_size)  # fmt: skip
        return await self.pool.request(body, codec.decode_m6)

    async def verify_mac(
        self, key_type: str, key_under_lmk: str, data: bytes, mac: str, *,
        algorithm: int = 3, padding: int = 1,
    ) -> bool:  # fmt: skip
        """M8: True when `mac` (8H or 16H) is the MAC of `data`."""
        body = codec.m8(key_type, key_under_lmk, data, mac, algorithm=algorithm, padding=padding)
        return await self.pool.request(body, _DECODE_M8)


@asynccontextmanager
async def open_hsm_client(
    addresses: Sequence[Address], **options: object
) -> AsyncIterator[HsmClient]:
    """A pool (see HsmPool for options: pool_size, timeout, header_len, ...) with the typed API."""
    async with open_hsm_pool(addresses, **options) as pool:
        yield HsmClient(pool)
