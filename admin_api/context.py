"""What the API needs from the switch, whether it runs inside it or on its own.

In-process (`from_services`) it shares the switch's database, ledger, HSM
client and in-memory reference data, so a provisioning write is reloaded at
once. Standalone (`switchd admin`, see standalone.py) it opens the same
databases itself; the running switch then picks the change up from the
``data_version`` bump within `switchd.store.RELOAD_INTERVAL_S`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hsm.client import HsmClient
from switchd.config import Config
from switchd.db import Database
from switchd.ledger import Ledger
from switchd.store import Store

if TYPE_CHECKING:
    from switchd.daemon import Switch
    from switchd.services import Services


@dataclass
class AdminContext:
    cfg: Config
    db: Database
    ledger: Ledger
    pan_key: bytes
    hsm: HsmClient | None = None
    kek_zmk_lmk: str = ""  # the KEK as a ZMK under the LMK: what A6 imports TMKs with
    #: Where reads go (readers.py); None until serve_admin opens it: then `db`.
    reader: Database | None = None
    store: Store | None = None  # in-process only: reloaded right after a write
    switch: Switch | None = None  # in-process only: listener state for /readyz
    started_at: float = field(default_factory=time.time)
    #: Token hash -> (principal, expiry on the monotonic clock): saves a query per call.
    token_cache: dict[str, tuple[Any, float]] = field(default_factory=dict)

    @classmethod
    def from_services(cls, services: Services, switch: Switch | None = None) -> AdminContext:
        return cls(
            cfg=services.cfg,
            db=services.store.db,
            ledger=services.ledger,
            pan_key=services.pan_key,
            hsm=services.hsm,
            kek_zmk_lmk=services.kek_zmk_lmk,
            store=services.store,
            switch=switch,
        )

    @property
    def read_db(self) -> Database:
        return self.reader if self.reader is not None else self.db

    @property
    def currency(self) -> str:
        return self.cfg.transactions.currency

    async def reference_data_changed(self) -> None:
        """After a committed provisioning write (which bumped data_version)."""
        if self.store is not None:
            await self.store.load()
