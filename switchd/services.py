"""What the participants need, in one place: configuration, data, HSM, ledger."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from hsm.client import HsmClient
from switchd.config import Config, Issuer
from switchd.journal import Journal
from switchd.ledger import Ledger
from switchd.store import Store

log = logging.getLogger("switchd.services")


@dataclass
class Services:
    cfg: Config
    store: Store
    journal: Journal
    ledger: Ledger
    hsm: HsmClient
    kek: bytes  # the switch's key-encryption key, clear, in memory only
    kek_zmk_lmk: str  # the same key under the LMK as a ZMK, for the HSM
    pan_key: bytes
    issuers: dict[str, Issuer] = field(default_factory=dict)
    # BIN lengths to try, longest first.
    bin_lengths: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        self.reload_issuers()

    def reload_issuers(self) -> None:
        self.issuers = {i.bin: i for i in self.cfg.issuers}
        self.bin_lengths = tuple(sorted({len(b) for b in self.issuers}, reverse=True))

    def issuer_for(self, pan: str) -> Issuer | None:
        for n in self.bin_lengths:
            issuer = self.issuers.get(pan[:n])
            if issuer is not None:
                return issuer
        return None
