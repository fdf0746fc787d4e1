"""Sign-on key generation against an HSM that is not there: one plain HsmUnavailable."""

from __future__ import annotations

import pytest
import trio

from hsm.client import open_hsm_client
from hsm.pool import HsmUnavailable
from switchd.keys import sign_on_keys


async def test_an_absent_hsm_is_one_plain_error_not_a_group() -> None:
    with trio.socket.socket() as probe:
        await probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # bound, never listening: connections are refused
        async with open_hsm_client([f"127.0.0.1:{port}"], wait=False, timeout=0.2,
                                   connect_timeout=0.2) as hsm:  # fmt: skip
            with pytest.raises(HsmUnavailable):
                await sign_on_keys(hsm, "U" + "0" * 32, "U" + "0" * 32, bytes(16), "004")
