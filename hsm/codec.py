"""Client-side, sans-I/O: build host command requests and decode their replies.

A request is `command code + fields` (the connection adds the header and the
length prefix); a reply body is what follows the echoed header: the reply
code, the 2-digit error code, then fields. The decoders check the reply code
against the command (a mismatch is a protocol error: the link is not to be
trusted) and turn error codes into `HsmCommandError`, except where a code is
an answer (DC/EC/M8 `01` = does not verify; A6 `01` = parity corrected).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

# --- results ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Diagnostics:
    lmk_check_value: str
    firmware: str


@dataclass(frozen=True, slots=True)
class GeneratedKey:
    under_lmk: str  # U+32H (or Z 16H / T+48H) for storage
    under_zmk: str | None  # the export form (mode 1), e.g. X+32H under a TMK
    kcv: str  # 6H


@dataclass(frozen=True, slots=True)
class ImportedKey:
    under_lmk: str
    kcv: str
    parity_corrected: bool


@dataclass(frozen=True, slots=True)
class ExportedKey:
    under_zmk: str
    kcv: str


@dataclass(frozen=True, slots=True)
class TranslatedPin:
    pin_length: int
    pin_block: str  # 16H under the destination key
    pin_format: str


class HsmCommandError(Exception):
    """The HSM answered the command with an error code (THALES.md §7)."""

    def __init__(self, command: str, code: str) -> None:
        super().__init__(f"HSM command {command} failed with error {code}")
        self.command = command
        self.code = code


class HsmProtocolError(Exception):
    """A reply that does not fit the protocol: the connection must be dropped."""


# --- framing helpers shared with the connection -------------------------------------


def expected_reply_code(command: bytes) -> bytes:
    return command[:1] + bytes((command[1] + 1,))


def split_reply(command: bytes, body: bytes) -> tuple[str, str]:
    """(error code, fields) of a reply body; raises HsmProtocolError if it is not one."""
    if len(body) < 4 or body[:2] != expected_reply_code(command):
        raise HsmProtocolError(f"reply {body[:2]!r} does not answer {command!r}")
    try:
        text = body[2:].decode("ascii")
    except UnicodeDecodeError:
        raise HsmProtocolError("reply is not ASCII") from None
    code = text[:2]
    if not code.isdigit():
        raise HsmProtocolError(f"error code {code!r} is not 2 digits")
    return code, text[2:]


def _ok(command: str, body: bytes) -> str:
    code, fields = split_reply(command.encode(), body)
    if code != "00":
        raise HsmCommandError(command, code)
    return fields


# A key field's length by its first character (anything else: 16H, no tag).
_KEY_LENGTHS = {"U": 33, "X": 33, "T": 49, "Y": 49, "Z": 17}


def _key_len(fields: str, pos: int) -> int:
    return _KEY_LENGTHS.get(fields[pos : pos + 1], 16)


def _take_key(command: str, fields: str, pos: int) -> tuple[str, int]:
    n = _key_len(fields, pos)
    if pos + n > len(fields):
        raise HsmProtocolError(f"{command} reply too short for a key")
    return fields[pos : pos + n], pos + n


def _field(value: str, n: int, what: str) -> str:
    """Check a caller-supplied fixed-width field so a bad value fails here, not in the HSM."""
    if len(value) != n or not value.isascii():
        raise ValueError(f"{what} must be {n} ASCII characters")
    return value


def _key_field(value: str) -> str:
    if not value.isascii() or _key_len(value, 0) != len(value):
        raise ValueError("key field must be 16H, or U/X+32H, or T/Y+48H, or Z+16H")
    return value


# --- NC / B2 ----------------------------------------------------------------------


def nc() -> bytes:
    return b"NC"


def decode_nc(body: bytes) -> Diagnostics:
    fields = _ok("NC", body)
    if len(fields) < 16:
        raise HsmProtocolError("ND reply too short")
    return Diagnostics(fields[:16], fields[16:])


def b2(data: bytes) -> bytes:
    return b"B2" + f"{len(data):04X}".encode() + data


def decode_b2(body: bytes) -> bytes:
    if body[:2] != b"B3" or body[2:4] != b"00":
        _ok("B2", body)  # raises the right error
    return body[4:]


# --- key management -----------------------------------------------------------------


def a0(
    key_type: str,
    scheme: str = "U",
    *,
    export_key: str | None = None,
    export_flag: str = "0",
    export_scheme: str = "X",
) -> bytes:
    """Generate a key (mode 0), or generate and export under a ZMK (`0`) or TMK (`1`)."""
    out = "A0" + ("1" if export_key else "0") + _field(key_type, 3, "key type") + scheme
    if export_key:
        out += ";" + export_flag + _key_field(export_key) + export_scheme
    return out.encode()


def decode_a0(body: bytes, exported: bool) -> GeneratedKey:
    fields = _ok("A0", body)
    under_lmk, pos = _take_key("A0", fields, 0)
    under_zmk = None
    if exported:
        under_zmk, pos = _take_key("A0", fields, pos)
    kcv = fields[pos:]
    if len(kcv) != 6:
        raise HsmProtocolError("A1 reply has no 6H check value")
    return GeneratedKey(under_lmk, under_zmk, kcv)


def a6(key_type: str, zmk: str, key_under_zmk: str, scheme: str = "U") -> bytes:
    return (
        "A6" + _field(key_type, 3, "key type") + _key_field(zmk) + _key_field(key_under_zmk)
        + scheme
    ).encode()


def decode_a6(body: bytes) -> ImportedKey:
    code, fields = split_reply(b"A6", body)
    if code not in ("00", "01"):
        raise HsmCommandError("A6", code)
    under_lmk, pos = _take_key("A6", fields, 0)
    return ImportedKey(under_lmk, fields[pos:], code == "01")


def a8(key_type: str, zmk: str, key_under_lmk: str, scheme: str = "U") -> bytes:
    return (
        "A8" + _field(key_type, 3, "key type") + _key_field(zmk) + _key_field(key_under_lmk)
        + scheme
    ).encode()


def decode_a8(body: bytes) -> ExportedKey:
    fields = _ok("A8", body)
    under_zmk, pos = _take_key("A8", fields, 0)
    return ExportedKey(under_zmk, fields[pos:])


_LENGTH_FLAG = {16: "0", 17: "0", 33: "1", 49: "2"}


def bu(key_type: str, key: str, *, full: bool = False) -> bytes:
    """Key check value of a key under the LMK: 6H, or 16H with `full`."""
    flag = _LENGTH_FLAG[len(_key_field(key))]
    return f"BUFF{flag}{key};{_field(key_type, 3, 'key type')};00{0 if full else 1}".encode()


def decode_bu(body: bytes) -> str:
    return _ok("BU", body)


# --- PIN ----------------------------------------------------------------------------


def _pin_common(block: str, src_fmt: str, account12: str) -> str:
    return _field(block, 16, "PIN block") + _field(src_fmt, 2, "format") + _field(
        account12, 12, "account"
    )


def _translate(
    code: str, src_key: str, dst_key: str, pin_block: str, account12: str,
    src_format: str, dst_format: str, max_pin_length: int,
) -> bytes:  # fmt: skip
    return (
        code + _key_field(src_key) + _key_field(dst_key) + f"{max_pin_length:02d}"
        + _field(pin_block, 16, "PIN block") + _field(src_format, 2, "format")
        + _field(dst_format, 2, "format") + _field(account12, 12, "account")
    ).encode()


def ca(
    tpk: str, zpk: str, pin_block: str, account12: str, *,
    src_format: str = "01", dst_format: str = "01", max_pin_length: int = 12,
) -> bytes:  # fmt: skip
    return _translate("CA", tpk, zpk, pin_block, account12, src_format, dst_format,
                      max_pin_length)  # fmt: skip


def cc(
    src_zpk: str, dst_zpk: str, pin_block: str, account12: str, *,
    src_format: str = "01", dst_format: str = "01", max_pin_length: int = 12,
) -> bytes:  # fmt: skip
    return _translate("CC", src_zpk, dst_zpk, pin_block, account12, src_format, dst_format,
                      max_pin_length)  # fmt: skip


def decode_translate(command: str, body: bytes) -> TranslatedPin:
    fields = _ok(command, body)
    if len(fields) != 20 or not fields[:2].isdigit():
        raise HsmProtocolError(f"{command} reply has the wrong length")
    return TranslatedPin(int(fields[:2]), fields[2:18], fields[18:20])


def _verify(
    code: str, key: str, pvk: str, pin_block: str, account12: str, pvki: str, pvv: str,
    pin_format: str,
) -> bytes:  # fmt: skip
    # Every PIN sale sends one: join the request once and check it all at
    # once (the PVK too, which the checks below let through as it is), and
    # only when something is wrong go through the checks that name it.
    text = "".join((code, key, pvk, pin_block, pin_format, account12, pvki, pvv))
    if (
        len(pin_block) == 16 and len(pin_format) == 2 and len(account12) == 12
        and len(pvki) == 1 and len(pvv) == 4 and len(key) == _KEY_LENGTHS.get(key[:1], 16)
        and text.isascii()
    ):  # fmt: skip
        return text.encode()
    return (
        code + _key_field(key) + pvk + _pin_common(pin_block, pin_format, account12)
        + _field(pvki, 1, "PVKI") + _field(pvv, 4, "PVV")
    ).encode()


def dc(
    tpk: str, pvk: str, pin_block: str, account12: str, pvki: str, pvv: str,
    *, pin_format: str = "01",
) -> bytes:  # fmt: skip
    return _verify("DC", tpk, pvk, pin_block, account12, pvki, pvv, pin_format)


def ec(
    zpk: str, pvk: str, pin_block: str, account12: str, pvki: str, pvv: str,
    *, pin_format: str = "01",
) -> bytes:  # fmt: skip
    return _verify("EC", zpk, pvk, pin_block, account12, pvki, pvv, pin_format)


# Command -> its two plain answers (verified, not verified), compared whole
# before the general parse.
_VERIFY_REPLIES = {
    c: (expected_reply_code(c.encode()) + b"00", expected_reply_code(c.encode()) + b"01")
    for c in ("DC", "EC", "M8")
}


def decode_verify(command: str, body: bytes) -> bool:
    """True for 00 (verified), False for 01 (does not verify); other codes raise."""
    replies = _VERIFY_REPLIES.get(command)
    if replies is not None:
        if body == replies[0]:
            return True
        if body == replies[1]:
            return False
    code, _ = split_reply(command.encode(), body)
    if code == "00":
        return True
    if code == "01":
        return False
    raise HsmCommandError(command, code)


def verify_decoder(command: str) -> Callable[[bytes], bool]:
    """`decode_verify` for one command, as a function of the reply alone: the
    client's DC/EC/M8 decoder, made once (one call per reply, not two)."""
    verified, not_verified = _VERIFY_REPLIES[command]

    def decode(body: bytes) -> bool:
        if body == verified:
            return True
        if body == not_verified:
            return False
        return decode_verify(command, body)

    return decode


def dg(pvk: str, pin_under_lmk: str, account12: str, pvki: str) -> bytes:
    return (
        "DG" + pvk + pin_under_lmk + _field(account12, 12, "account") + _field(pvki, 1, "PVKI")
    ).encode()


def decode_dg(body: bytes) -> str:
    fields = _ok("DG", body)
    if len(fields) != 4:
        raise HsmProtocolError("DH reply has the wrong length")
    return fields


def ba(pin: str, account12: str) -> bytes:
    return ("BA" + pin + _field(account12, 12, "account")).encode()


def decode_pin_under_lmk(command: str, body: bytes) -> str:
    return _ok(command, body)


def je(zpk: str, pin_block: str, account12: str, *, pin_format: str = "01") -> bytes:
    return ("JE" + _key_field(zpk) + _pin_common(pin_block, pin_format, account12)).encode()


def jg(zpk: str, pin_under_lmk: str, account12: str, *, pin_format: str = "01") -> bytes:
    return (
        "JG" + _key_field(zpk) + _field(pin_format, 2, "format")
        + _field(account12, 12, "account") + pin_under_lmk
    ).encode()


def decode_jg(body: bytes) -> str:
    fields = _ok("JG", body)
    if len(fields) != 16:
        raise HsmProtocolError("JH reply has the wrong length")
    return fields


# --- MAC ----------------------------------------------------------------------------


def _mac(
    code: str, key_type: str, key: str, data: bytes, algorithm: int, padding: int,
    mac_size: int,
) -> bytes:  # fmt: skip
    size = "0" if mac_size == 8 else "1"
    return (
        f"{code}00{size}{algorithm}{padding}{_field(key_type, 3, 'key type')}{_key_field(key)}"
        f"{len(data):04X}"
    ).encode() + data


def m6(
    key_type: str, key: str, data: bytes, *, algorithm: int = 3, padding: int = 1,
    mac_size: int = 16,
) -> bytes:  # fmt: skip
    """Whole-message MAC (mode 0, binary input). `mac_size` is 8 or 16 hex digits."""
    return _mac("M6", key_type, key, data, algorithm, padding, mac_size)


def decode_m6(body: bytes) -> str:
    return _ok("M6", body)


def m8(
    key_type: str, key: str, data: bytes, mac: str, *, algorithm: int = 3, padding: int = 1,
) -> bytes:  # fmt: skip
    return _mac("M8", key_type, key, data, algorithm, padding, len(mac)) + mac.encode()
