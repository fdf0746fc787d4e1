"""A CUP-style POS terminal without I/O: what it sends and how it reads answers.

Shared by the one-shot terminal (``python -m bench.terminal``), the fleet
load generator and the end-to-end tests, each bringing its own sockets
(asyncio/uvloop for the generator, trio for the tests). It holds what a real
terminal holds: the TMK, the working keys from the last sign-on, its STAN
counter and batch number, and it checks every answer's MAC as a terminal
must.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fastpath import requests as rq
from fastpath.codec import Message, decode_frame, encode_frame
from fastpath.crypto import DesKey, decrypt_working_key, key_check_value

DEMO_TMK = bytes.fromhex("404142434445464748494A4B4C4D4E4F")


class TerminalError(Exception):
    """An answer a terminal must refuse: bad MAC, bad keys, not a frame."""


@dataclass(slots=True)
class Response:
    msg: Message
    mac_ok: bool | None  # None: the answer carries no MAC
    # Decoded once: a caller reads it several times per answer.
    rc: str | None = field(init=False)

    def __post_init__(self) -> None:
        self.rc = self.msg.response_code


@dataclass
class Terminal:
    tid: str
    mid: str
    tmk: bytes = DEMO_TMK
    tpdu: bytes = rq.DEFAULT_TPDU
    header: bytes = rq.DEFAULT_HEADER
    batch: str = "000001"
    stan: int = 0
    pik: DesKey | None = None  # its key schedule, made once per sign-on
    mak: DesKey | None = None
    history: dict[str, rq.Original] = field(default_factory=dict)

    @property
    def ident(self) -> rq.Terminal:
        return rq.Terminal(self.tid, self.mid, self.batch)

    def next_stan(self) -> str:
        self.stan = self.stan % 999_999 + 1
        return f"{self.stan:06d}"

    def frame(self, mti: str, fields: dict[int, object], *, sign: bool = True) -> bytes:
        """A whole frame (with its length) for a request built by fastpath.requests."""
        return encode_frame(self.tpdu, self.header, mti, fields, self.mak if sign else None)

    def read(self, body: bytes) -> Response:
        """Decode an answer's frame body and check its MAC when it has one."""
        msg = decode_frame(body)
        if 64 not in msg:
            return Response(msg, None)
        return Response(msg, self.mak is not None and msg.verify_mac(self.mak))

    # -- sign-on ------------------------------------------------------------

    def sign_on_frame(self, netcode: str = "003") -> bytes:
        return self.frame(*rq.sign_on(self.ident, self.next_stan(), netcode), sign=False)

    def install_keys(self, resp: Response, netcode: str = "003") -> None:
        """Take the working keys of an 0810 (F62 under the TMK) and the batch from 60.2."""
        f62 = resp.msg.get(62)
        if resp.rc != "00" or f62 is None:
            raise TerminalError(f"sign-on refused: {resp.rc}")
        double = netcode in ("003", "004")
        plen = 16 if double else 8
        expected = {"001": 24, "003": 40, "004": 60}[netcode]
        if len(f62) != expected:
            raise TerminalError(f"F62 is {len(f62)} bytes, expected {expected}")
        pik = decrypt_working_key(self.tmk, f62[:plen])
        if key_check_value(pik, 4) != f62[plen : plen + 4]:
            raise TerminalError("PIK check value mismatch")
        at = plen + 4
        mak = decrypt_working_key(self.tmk, f62[at : at + 8])
        at += 16 if double else 8
        if key_check_value(mak, 4) != f62[at : at + 4]:
            raise TerminalError("MAK check value mismatch")
        self.pik, self.mak = DesKey(pik), DesKey(mak)
        if 64 in resp.msg:
            resp.mac_ok = resp.msg.verify_mac(self.mak)
            if not resp.mac_ok:
                raise TerminalError("sign-on answer MAC does not verify under the new MAK")
        self.batch = resp.msg.batch or self.batch

    # -- transactions -----------------------------------------------------

    def remember(self, name: str, resp: Response, request_stan: str) -> rq.Original:
        """Keep what a later void/refund/completion must quote of an approved original."""
        orig = rq.Original(
            batch=self.batch, stan=request_stan, date=resp.msg.local_date or "",
            rrn=resp.msg.rrn or "", auth_code=(resp.msg.auth_code or "").strip(),
        )  # fmt: skip
        self.history[name] = orig
        return orig
