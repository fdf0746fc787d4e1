"""The switch's configuration: one TOML file decoded into msgspec Structs.

Every section has defaults, so an empty file (or none) runs the embedded
setup: SQLite ledger under ``./var``, the software HSM in-process with the
published test LMKs, and the demo merchants, terminals and cards. Errors
name the path of the bad field (``$.hsm.pool_size``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import msgspec


class ConfigError(ValueError):
    """A configuration file that cannot be used; the message names the field."""


class Base(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class Listener(Base):
    host: str = "127.0.0.1"
    port: int = 5800


class Terminals(Base):
    max_connections: int = 10_000
    idle_timeout_s: float = 300.0
    max_frame: int = 2048
    # Frames taken from one read before the rest wait for their turn: with
    # strict in-order answers this bounds what one connection can queue.
    max_inflight_frames: int = 16
    swap_tpdu: bool = True
    # Seconds a connection may take to send the rest of a frame it started.
    frame_timeout_s: float = 30.0


class Routing(Base):
    """TPDU destination address (4 hex digits) -> application."""

    applications: dict[str, str] = msgspec.field(default_factory=lambda: {"0001": "bankcard"})
    default_application: str = "bankcard"


class Issuer(Base):
    bin: str
    name: str
    on_us: bool = True
    # PVK pair under the LMK (type 002); empty: generated at first start and
    # kept in the database (embedded demo only).
    pvk: str = ""
    pvki: int = 1


class Hsm(Base):
    embedded: bool = True  # start the software HSM in-process
    lmk: str = "test"  # embedded only: "test" (published Thales test LMKs) or a file
    addresses: list[str] = msgspec.field(default_factory=list)
    header_len: int = 4
    pool_size: int = 4
    timeout_s: float = 2.0


class Ledger(Base):
    backend: Literal["sqlite", "postgres"] = "sqlite"
    sqlite_path: str = "ledger.sqlite"  # relative to data_dir
    postgres_dsn: str = "postgresql://postgres@127.0.0.1:5432/test"
    postgres_schema: str = "switchd"
    pool_size: int = 4
    # "process": the writers of the ledger and of the journal run in child
    # processes, off the GIL of the process serving terminals; "thread": in
    # worker threads (switchd/ledger/writer_process.py, switchd/journal_writer.py).
    writer: Literal["thread", "process"] = "process"


class Security(Base):
    # Key-encryption key for working keys at rest (3DES, 32 hex). The default
    # is a DEMO KEY, published here: a real deployment sets its own via the
    # SWITCHD_KEK environment variable or this field in a file kept secret.
    kek: str = "D3E0D3E0D3E0D3E0C1C2C3C4C5C6C7C8"
    # Keyed hash of PANs (card lookup, account ids): same rule as the KEK.
    pan_key: str = "demo-pan-hash-key"
    # Wrong PINs in a row that block the card's PIN: the wrong PIN that
    # reaches it is answered 75 (55 before it), and so is every PIN after,
    # right or wrong, until the count is reset (admin API); a right PIN
    # before then sets it back to 0.
    pin_tries: int = 3
    # The KEK under the LMK as a ZMK (type 000), from the key ceremony. Needed
    # with an external HSM; the embedded one derives it from its LMK.
    kek_lmk: str = ""


class Limits(Base):
    """Defaults for merchants that have no limit of their own (minor units)."""

    max_amount: int = 500_000_00  # 500,000.00
    min_amount: int = 1


class Transactions(Base):
    timeout_s: float = 5.0  # answer 96/98 when a transaction cannot finish in time
    # Transactions in progress at once per switch process; more wait in order
    # (switchd/admission.py). Size it above peak rate x transaction time.
    max_in_flight: int = 1024
    # Longest a request waits for one of those slots before it is answered 96
    # with nothing done; once admitted it has timeout_s of its own.
    queue_timeout_s: float = 5.0
    completion_tolerance_pct: int = 15
    preauth_expiry_s: int = 30 * 86_400
    acquirer_id: str = "01020000"
    currency: str = "156"


#: Field 62's longest value (PROTOCOL.md §2: b/ans...512).
F62_MAX = 512


class Parameters(Base):
    """What an 0800 parameter download (60.3 = 360) returns in F62: tag -> value."""

    values: dict[str, str] = msgspec.field(
        default_factory=lambda: {
            "11": "60",  # communication timeout, seconds
            "12": "3",  # dial retries
            "14": "0",
            "15": "01020000",
            "16": "Demo Acquirer",
        }
    )

    def field62(self) -> bytes:
        """F62 of the answer: per entry tag (2) + length (2) + value.

        Text is GBK (PROTOCOL.md §2: "GBK where Chinese text appears"), and
        each length counts the value's bytes, so a terminal can walk the
        entries whatever the script. Raises ValueError for what F62 cannot hold.
        """
        out = b""
        for tag, value in self.values.items():
            data = value.encode("gbk")  # UnicodeEncodeError is a ValueError
            if len(data) > 99:
                raise ValueError(f"parameter {tag} is {len(data)} bytes in GBK, at most 99")
            out += f"{tag[:2]:0>2}{len(data):02d}".encode() + data
        if len(out) > F62_MAX:
            raise ValueError(f"the parameters take {len(out)} bytes, F62 holds {F62_MAX}")
        return out


class Admin(Base):
    host: str = "127.0.0.1"
    port: int = 8580
    enabled: bool = True


class Demo(Base):
    enabled: bool = True
    terminals_per_merchant: int = 5000
    cards: int = 10_000
    # The demo TMK under the LMK (type 002); needed only with an external HSM.
    tmk_lmk: str = ""


class Config(Base):
    data_dir: str = "./var"
    listeners: list[Listener] = msgspec.field(default_factory=lambda: [Listener()])
    terminals: Terminals = msgspec.field(default_factory=Terminals)
    routing: Routing = msgspec.field(default_factory=Routing)
    issuers: list[Issuer] = msgspec.field(
        default_factory=lambda: [Issuer(bin="622848", name="Demo Bank")]
    )
    hsm: Hsm = msgspec.field(default_factory=Hsm)
    ledger: Ledger = msgspec.field(default_factory=Ledger)
    security: Security = msgspec.field(default_factory=Security)
    limits: Limits = msgspec.field(default_factory=Limits)
    transactions: Transactions = msgspec.field(default_factory=Transactions)
    parameters: Parameters = msgspec.field(default_factory=Parameters)
    admin: Admin = msgspec.field(default_factory=Admin)
    demo: Demo = msgspec.field(default_factory=Demo)

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)


def _check(cfg: Config) -> None:
    """Rules a type cannot say; each error names its field like msgspec does."""

    def fail(path: str, why: str) -> None:
        raise ConfigError(f"{why} - at `$.{path}`")

    if not cfg.listeners:
        fail("listeners", "at least one listener is needed")
    for i, lst in enumerate(cfg.listeners):
        if not 0 <= lst.port <= 65535:
            fail(f"listeners[{i}].port", "a port is 0-65535")
    for code in cfg.routing.applications:
        if len(code) != 4 or any(c not in "0123456789ABCDEFabcdef" for c in code):
            fail(f"routing.applications.{code}", "a TPDU address is 4 hex digits")
    for i, iss in enumerate(cfg.issuers):
        if not (iss.bin.isdigit() and 4 <= len(iss.bin) <= 11):
            fail(f"issuers[{i}].bin", "a BIN is 4-11 digits")
    kek = os.environ.get("SWITCHD_KEK", cfg.security.kek)
    try:
        if len(bytes.fromhex(kek)) not in (16, 24):
            raise ValueError
    except ValueError:
        fail("security.kek", "the KEK is 32 or 48 hex digits")
    if cfg.security.pin_tries < 1:
        fail("security.pin_tries", "must be at least 1")
    if cfg.terminals.max_frame < 21 or cfg.terminals.max_frame > 65535:
        fail("terminals.max_frame", "must be 21-65535")
    if cfg.terminals.max_inflight_frames < 1:
        fail("terminals.max_inflight_frames", "must be at least 1")
    if not cfg.hsm.embedded and not cfg.hsm.addresses:
        fail("hsm.addresses", "an external HSM needs at least one address")
    if cfg.transactions.max_in_flight < 1:
        fail("transactions.max_in_flight", "must be at least 1")
    if cfg.transactions.queue_timeout_s <= 0:
        fail("transactions.queue_timeout_s", "must be above 0")
    if not 0 <= cfg.transactions.completion_tolerance_pct <= 100:
        fail("transactions.completion_tolerance_pct", "must be 0-100")
    # Every financial answer carries them (F32 n..11, F49 n3 in PROTOCOL.md
    # §2): a value the codec cannot encode would turn each answer into a 96.
    acq = cfg.transactions.acquirer_id
    if not (acq.isdigit() and acq.isascii() and len(acq) <= 11):
        fail("transactions.acquirer_id", "1 to 11 digits (F32)")
    cur = cfg.transactions.currency
    if not (cur.isdigit() and cur.isascii() and len(cur) == 3):
        fail("transactions.currency", "3 digits, ISO 4217 numeric (F49)")
    try:
        cfg.parameters.field62()
    except ValueError as exc:
        fail("parameters.values", str(exc))


def load(path: str | os.PathLike[str] | None) -> Config:
    """Decode and check a configuration file; None gives the embedded defaults."""
    if path is None:
        cfg = Config()
    else:
        try:
            raw = Path(path).read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
        try:
            cfg = msgspec.toml.decode(raw, type=Config)
        except msgspec.ValidationError as exc:
            raise ConfigError(str(exc)) from None
        except msgspec.DecodeError as exc:
            raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    _check(cfg)
    return cfg


def kek_bytes(cfg: Config) -> bytes:
    return bytes.fromhex(os.environ.get("SWITCHD_KEK", cfg.security.kek))
