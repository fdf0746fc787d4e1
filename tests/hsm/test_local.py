"""The in-process link (hsm/local.py): the pool and typed client over a software HSM, no socket."""

from __future__ import annotations

import pytest
import trio
from prometheus_client import REGISTRY

from hsm import codec
from hsm.client import TPK, ZPK, open_hsm_client
from hsm.codec import HsmCommandError, HsmProtocolError
from hsm.lmk import LmkSet
from hsm.local import LocalHsmConnection
from hsm.pool import HsmUnavailable
from hsm.server import HsmServer
from hsm.testing import pin_block

from .conftest import LOCALHOST
from .test_client import ACCOUNT, PVKI, Keys, counter


async def test_same_answers_as_over_tcp(hsm_port: int, lmk: LmkSet) -> None:
    """Deterministic commands answer byte for byte as the TCP server does."""
    keys = Keys(lmk)
    block = pin_block(lmk, TPK, keys.tpk, "4321", ACCOUNT)
    wrong = pin_block(lmk, TPK, keys.tpk, "4322", ACCOUNT)
    answers = []
    for address in (HsmServer(lmk), f"{LOCALHOST}:{hsm_port}"):
        async with open_hsm_client([address]) as hsm:
            diag = await hsm.diagnostics()
            ok = await hsm.verify_pin_pvv(keys.tpk, keys.pvk, block, ACCOUNT, PVKI, keys.pvv)
            bad = await hsm.verify_pin_pvv(keys.tpk, keys.pvk, wrong, ACCOUNT, PVKI, keys.pvv)
            out = await hsm.translate_pin(keys.tpk, keys.zpk, block, ACCOUNT)
            # THALES.md §6 vector 4.
            v4 = await hsm.translate_pin_zpk(
                "T971803BA969012152827CC97A98D18D50BE6559CDFF6F7E1",
                "U247078713614BE11F819054C5FFB08FF", "F2B66A1070EADC47", "000001000376",
                src_format="05")  # fmt: skip
            key = await hsm.generate_key(ZPK, scheme="U")
            assert await hsm.key_check_value(ZPK, key.under_lmk) == key.kcv
            with pytest.raises(HsmCommandError) as err:
                await hsm.verify_pin_pvv(keys.zpk, keys.pvk, block, ACCOUNT, PVKI, keys.pvv)
            answers.append((diag, ok, bad, out, v4, err.value.code))
    assert answers[0] == answers[1]
    assert answers[0][1:3] == (True, False)
    assert (answers[0][4].pin_length, answers[0][4].pin_block) == (5, "DBEEBF06C9ED0A48")


async def test_pool_counts_and_names_the_link(lmk: LmkSet) -> None:
    before = counter("hsm_client_requests_total", command="NC", result="ok")
    served = counter("hsm_server_commands_total", command="NC", code="00")
    async with open_hsm_client([HsmServer(lmk)], pool_size=4) as hsm:
        node = hsm.pool.nodes[0]
        assert node.name == "in-process" and node.up and len(node.conns) == 1
        await hsm.diagnostics()
    assert counter("hsm_client_requests_total", command="NC", result="ok") >= before + 1
    assert counter("hsm_server_commands_total", command="NC", code="00") >= served + 1


async def test_closed_link_fails_over_then_comes_back(lmk: LmkSet) -> None:
    async with open_hsm_client([HsmServer(lmk)], timeout=0.2, backoff_min=1.0) as hsm:
        node = hsm.pool.nodes[0]
        link = node.conns[0]
        node.mark_down("test: link cut")
        assert link.closed
        with pytest.raises(HsmUnavailable):
            await hsm.diagnostics()
        # The supervisor reopens the link after its backoff and checks it with NC.
        await hsm.pool.wait_ready(5)
        assert (await hsm.diagnostics()).lmk_check_value == "7D22274C5745C5A1"
        assert node.conns[0] is not link


async def test_reply_that_does_not_answer_is_a_protocol_error(lmk: LmkSet) -> None:
    server = HsmServer(lmk)
    link = LocalHsmConnection(server, "in-process")
    server.core.handle = lambda message: message[:4] + b"XX00"  # type: ignore[method-assign]
    with pytest.raises(HsmProtocolError):
        await link.request(b"NC", 1.0)
    link.close()
    with pytest.raises(Exception, match="closed"):
        await link.request(b"NC", 1.0)


async def test_a_cancelled_caller_is_cancelled(lmk: LmkSet) -> None:
    async with open_hsm_client([HsmServer(lmk)]) as hsm:
        with trio.CancelScope() as scope:
            scope.cancel()
            await hsm.diagnostics()
        assert scope.cancelled_caught
        assert (await hsm.diagnostics()).lmk_check_value == "7D22274C5745C5A1"


async def test_first_failure_makes_no_ok_series(lmk: LmkSet) -> None:
    """A command's series appear when a request is counted in them, none before:
    an unknown command (error 99) shows hsm_error and its latency, and no ok."""

    def decode(body: bytes) -> None:
        codec.split_reply(b"ZQ", body)
        raise HsmCommandError("ZQ", body[2:4].decode())

    async with open_hsm_client([HsmServer(lmk)]) as hsm:
        # The pool times requests by trio's clock, taken once when it started.
        assert hsm.pool._now.__self__ is trio.lowlevel.current_clock()  # type: ignore[attr-defined]
        for _ in range(2):
            with pytest.raises(HsmCommandError):
                await hsm.pool.request(b"ZQ", decode)
    assert REGISTRY.get_sample_value(
        "hsm_client_requests_total", {"command": "ZQ", "result": "ok"}) is None  # fmt: skip
    assert counter("hsm_client_requests_total", command="ZQ", result="hsm_error") == 2
    assert counter("hsm_client_request_duration_seconds_count", command="ZQ") == 2


async def test_known_answer_to_another_command_is_a_protocol_error(lmk: LmkSet) -> None:
    """The link's one-lookup check of usual replies still refuses a reply that
    answers another command or echoes another header, and counts it as before."""
    server = HsmServer(lmk)
    link = LocalHsmConnection(server, "in-process")
    assert (await link.request(b"NC", 1.0))[:4] == b"ND00"  # ND00 is now a usual reply
    handle = server.core.handle
    cases = [
        (b"DC", lambda message: message[:4] + b"ND00"),  # DC answered as NC
        (b"NC", lambda message: b"XXXX" + handle(message)[4:]),  # another header
    ]
    for command, wrong in cases:
        served = counter("hsm_server_commands_total", command=command.decode(), code="00")
        server.core.handle = wrong  # type: ignore[method-assign]
        with pytest.raises(HsmProtocolError):
            await link.request(command, 1.0)
        server.core.handle = handle  # type: ignore[method-assign]
        after = counter("hsm_server_commands_total", command=command.decode(), code="00")
        assert after == served + 1
    assert (await link.request(b"NC", 1.0))[:4] == b"ND00"
