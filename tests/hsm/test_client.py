"""The pooled client against the software HSM (and a misbehaving one) over real sockets."""

from __future__ import annotations

import pytest
import trio
from prometheus_client import REGISTRY

from hsm.client import DEK, TAK, TPK, ZAK, ZMK, ZPK, HsmClient, open_hsm_client
from hsm.codec import HsmCommandError
from hsm.crypto import kcv
from hsm.lmk import LmkSet, decrypt_under_zmk
from hsm.pool import HsmUnavailable
from hsm.server import serve_hsm
from hsm.testing import clear_key, key_under_lmk, pin_block, pin_under_lmk, pvv

from .conftest import LOCALHOST
from .fake_hsm import CLOSE, GARBAGE, HUGE, NORMAL, SILENT, SLOW, WRONG_CODE, WRONG_HEADER, FakeHsm

ACCOUNT = "400000123456"
PVKI = "1"


class Keys:
    """A terminal TPK, a zone ZPK and a PVK under the test LMK."""

    def __init__(self, lmk: LmkSet) -> None:
        self.tpk = key_under_lmk(lmk, "002", bytes.fromhex("0123456789ABCDEFFEDCBA9876543210"))
        self.zpk = key_under_lmk(lmk, "001", bytes.fromhex("89ABCDEF01234567FEDCBA9876543210"))
        self.pvk = key_under_lmk(lmk, "002", bytes.fromhex("FEDCBA9876543210FEDCBA9876543210"))
        self.pvv = pvv(lmk, self.pvk, ACCOUNT, PVKI, "4321")


@pytest.fixture
def keys(lmk: LmkSet) -> Keys:
    return Keys(lmk)


def counter(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_diagnostics_echo_and_keys(hsm_port: int, lmk: LmkSet) -> None:
    async with open_hsm_client([f"{LOCALHOST}:{hsm_port}"], pool_size=2) as hsm:
        diag = await hsm.diagnostics()
        assert diag.lmk_check_value == "7D22274C5745C5A1"
        assert await hsm.echo(b"hello") == b"hello"

        single = await hsm.generate_key(ZPK, scheme="Z")
        assert len(single.under_lmk) == 16 and single.under_zmk is None
        triple = await hsm.generate_key(DEK, scheme="T")
        assert triple.under_lmk[0] == "T"
        assert await hsm.key_check_value(DEK, triple.under_lmk) == triple.kcv

        zmk_clear = bytes.fromhex("0123456789ABCDEF0123456789ABCDEF")[::-1]
        zmk = key_under_lmk(lmk, ZMK, zmk_clear)
        zpk = await hsm.generate_key(ZPK, export_under=zmk, export_scheme="U")
        assert zpk.under_zmk is not None and zpk.under_zmk[0] == "U"
        assert decrypt_under_zmk(clear_key(lmk, ZMK, zmk), zpk.under_zmk) == clear_key(
            lmk, ZPK, zpk.under_lmk)

        # A8 then A6 under the same ZMK gives the same key back.
        exported = await hsm.export_key(ZPK, zmk, zpk.under_lmk, scheme="X")
        assert exported.kcv == zpk.kcv
        imported = await hsm.import_key(ZPK, zmk, exported.under_zmk)
        assert not imported.parity_corrected and imported.kcv == zpk.kcv
        assert await hsm.key_check_value(ZPK, imported.under_lmk, full=True) == kcv(
            clear_key(lmk, ZPK, zpk.under_lmk))

        # THALES.md §6 vector 2 through the typed API: the parity warning is a result.
        v2 = await hsm.import_key(ZPK, "UE13D662B185F5F3B08594F89F1FF903A",
                                  "X7BC09407A015F72FC59C32147D2AAE57")
        assert v2 == type(v2)("U0B7C6F68A38FA3C2CB42C2991576A986", "DA24FF", True)


async def test_generate_working_keys_for_sign_on(hsm_port: int, lmk: LmkSet) -> None:
    tmk_clear = bytes.fromhex("70F2A84CCBC2AE8625CBB0F2C22AB923")
    tmk = key_under_lmk(lmk, TPK, tmk_clear)
    async with open_hsm_client([f"{LOCALHOST}:{hsm_port}"]) as hsm:
        wk = await hsm.generate_working_keys(tmk, with_tdk=True)
        for key, type_code in ((wk.pik, TPK), (wk.mak, TAK), (wk.tdk, DEK)):
            assert key is not None and key.under_zmk is not None
            assert key.under_zmk[0] == "X"
            clear = clear_key(lmk, type_code, key.under_lmk)
            # What the terminal does: plain 3DES-ECB of each half under its TMK.
            assert decrypt_under_zmk(tmk_clear, key.under_zmk) == clear
            assert key.kcv == kcv(clear)[:6]
            assert await hsm.key_check_value(type_code, key.under_lmk) == key.kcv
        assert (await hsm.generate_working_keys(tmk)).tdk is None
        with pytest.raises(HsmCommandError) as err:
            await hsm.generate_working_keys(key_under_lmk(lmk, ZPK, tmk_clear))  # not a TMK
        assert err.value.code == "10"


async def test_pin_commands(hsm_port: int, lmk: LmkSet, keys: Keys) -> None:
    block = pin_block(lmk, TPK, keys.tpk, "4321", ACCOUNT)
    async with open_hsm_client([f"{LOCALHOST}:{hsm_port}"]) as hsm:
        assert await hsm.verify_pin_pvv(keys.tpk, keys.pvk, block, ACCOUNT, PVKI, keys.pvv)
        wrong = pin_block(lmk, TPK, keys.tpk, "4322", ACCOUNT)
        assert not await hsm.verify_pin_pvv(keys.tpk, keys.pvk, wrong, ACCOUNT, PVKI, keys.pvv)

        out = await hsm.translate_pin(keys.tpk, keys.zpk, block, ACCOUNT)
        assert (out.pin_length, out.pin_format) == (4, "01")
        assert await hsm.verify_interchange_pin_pvv(
            keys.zpk, keys.pvk, out.pin_block, ACCOUNT, PVKI, keys.pvv)
        # ...and to ISO format 3 and back through CC.
        iso3 = await hsm.translate_pin(keys.tpk, keys.zpk, block, ACCOUNT, dst_format="47")
        back = await hsm.translate_pin_zpk(keys.zpk, keys.zpk, iso3.pin_block, ACCOUNT,
                                           src_format="47")
        assert back.pin_block == out.pin_block  # format 0 is deterministic

        # THALES.md §6 vector 4 through the typed API.
        v4 = await hsm.translate_pin_zpk(
            "T971803BA969012152827CC97A98D18D50BE6559CDFF6F7E1",
            "U247078713614BE11F819054C5FFB08FF", "F2B66A1070EADC47", "000001000376",
            src_format="05")
        assert (v4.pin_length, v4.pin_block) == (5, "DBEEBF06C9ED0A48")

        # PIN under LMK: BA, DG, JE, JG.
        under_lmk = await hsm.encrypt_pin("4321", ACCOUNT)
        assert under_lmk == pin_under_lmk(lmk, "4321", ACCOUNT)
        assert len(under_lmk) == 5 and under_lmk.isdigit()
        assert await hsm.generate_pvv(keys.pvk, under_lmk, ACCOUNT, PVKI) == keys.pvv
        assert await hsm.pin_to_lmk(keys.zpk, out.pin_block, ACCOUNT) == under_lmk
        assert await hsm.pin_to_zpk(keys.zpk, under_lmk, ACCOUNT) == out.pin_block

        with pytest.raises(HsmCommandError) as err:
            await hsm.generate_pvv(keys.pvk, "00000", ACCOUNT, PVKI)
        assert err.value.code == "14"
        with pytest.raises(HsmCommandError) as err:
            await hsm.verify_pin_pvv(keys.zpk, keys.pvk, block, ACCOUNT, PVKI, keys.pvv)
        assert err.value.code == "10"


async def test_mac_commands(hsm_port: int) -> None:
    tak = "U90A17A99E4BA32475E692D7AAE177BBD"
    async with open_hsm_client([f"{LOCALHOST}:{hsm_port}"]) as hsm:
        assert await hsm.generate_mac(TAK, tak, b"1234567887654321") == "934F05263310B6D3"
        mac8 = await hsm.generate_mac(ZAK, "U2549A1834EFDDC9629CBD8DC5C982D75",
                                      b"1234567887654321", mac_size=8)
        assert mac8 == "A1C911EB"
        assert await hsm.verify_mac(TAK, tak, b"1234567887654321", "934F05263310B6D3")
        assert not await hsm.verify_mac(TAK, tak, b"1234567887654322", "934F05263310B6D3")
        assert await hsm.verify_mac(ZAK, "U2549A1834EFDDC9629CBD8DC5C982D75",
                                    b"1234567887654321", mac8)


async def test_hundreds_of_pipelined_requests(hsm_port: int, lmk: LmkSet, keys: Keys) -> None:
    blocks = [pin_block(lmk, TPK, keys.tpk, "4321" if i % 3 else "9999", ACCOUNT)
              for i in range(600)]
    results: dict[int, bool] = {}
    before = counter("hsm_client_requests_total", command="DC", result="ok")
    async with open_hsm_client([f"{LOCALHOST}:{hsm_port}"], pool_size=2) as hsm:

        async def one(i: int) -> None:
            results[i] = await hsm.verify_pin_pvv(keys.tpk, keys.pvk, blocks[i], ACCOUNT,
                                                  PVKI, keys.pvv)

        with trio.fail_after(20):
            async with trio.open_nursery() as n:
                for i in range(600):
                    n.start_soon(one, i)
        assert max(c.in_flight for node in hsm.pool.nodes for c in node.conns) == 0
    assert results == {i: bool(i % 3) for i in range(600)}
    assert counter("hsm_client_requests_total", command="DC", result="ok") - before == 600
    assert counter("hsm_client_request_duration_seconds_count", command="DC") >= 600


async def test_failover_when_an_hsm_is_killed_mid_run(
    nursery: trio.Nursery, lmk: LmkSet, keys: Keys
) -> None:
    scopes = [trio.CancelScope(), trio.CancelScope()]
    ports = []
    for scope in scopes:
        async def run(scope: trio.CancelScope = scope, *,
                      task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
            with scope:
                await serve_hsm(lmk, LOCALHOST, 0, task_status=task_status)
        ports.append(await nursery.start(run))
    block = pin_block(lmk, TPK, keys.tpk, "4321", ACCOUNT)
    addresses = [f"{LOCALHOST}:{p}" for p in ports]
    ok = 0
    async with open_hsm_client(addresses, pool_size=2, timeout=2.0) as hsm:
        await trio.sleep(0.05)  # let both come into rotation
        assert all(node.up for node in hsm.pool.nodes)

        async def caller() -> None:
            nonlocal ok
            for _ in range(40):
                assert await hsm.verify_pin_pvv(keys.tpk, keys.pvk, block, ACCOUNT, PVKI, keys.pvv)
                ok += 1
                await trio.sleep(0.001)

        with trio.fail_after(20):
            async with trio.open_nursery() as n:
                for _ in range(20):
                    n.start_soon(caller)
                await trio.sleep(0.03)
                scopes[0].cancel()  # kill HSM 0 with requests in flight
        assert ok == 800
        assert not hsm.pool.nodes[0].up and hsm.pool.nodes[1].up
        assert counter("hsm_client_hsm_up", hsm=addresses[0]) == 0
        assert counter("hsm_client_pool_connections", hsm=addresses[1]) == 2


async def _start_fake(nursery: trio.Nursery, lmk: LmkSet) -> tuple[FakeHsm, str]:
    fake = FakeHsm(lmk)
    port = await nursery.start(fake.serve)
    return fake, f"{LOCALHOST}:{port}"


@pytest.mark.parametrize("mode", [SILENT, GARBAGE, HUGE, WRONG_HEADER, WRONG_CODE])
async def test_misbehaving_hsm_fails_over(
    nursery: trio.Nursery, lmk: LmkSet, hsm_port: int, mode: str
) -> None:
    fake, fake_addr = await _start_fake(nursery, lmk)
    good = f"{LOCALHOST}:{hsm_port}"
    async with open_hsm_client([fake_addr, good], timeout=0.3, health_interval=0.2) as hsm:
        await trio.sleep(0.05)
        assert all(node.up for node in hsm.pool.nodes)
        fake.mode = mode
        before = fake.requests
        with trio.fail_after(10):
            for i in range(10):
                assert await hsm.echo(b"%d" % i) == b"%d" % i
        assert fake.requests > before  # the bad HSM was tried, and failed over
        assert not hsm.pool.nodes[0].up


@pytest.mark.parametrize("mode", [SILENT, GARBAGE, WRONG_HEADER])
async def test_single_bad_hsm_fails_fast_and_recovers(
    nursery: trio.Nursery, lmk: LmkSet, mode: str
) -> None:
    fake, addr = await _start_fake(nursery, lmk)
    async with open_hsm_client([addr], timeout=0.3, health_interval=0.1,
                               backoff_min=0.05, backoff_max=0.2) as hsm:
        fake.mode = mode
        with trio.fail_after(5):  # nothing hangs: attempts x timeout, plus waiting for an HSM
            with pytest.raises(HsmUnavailable):
                await hsm.echo(b"x")
            with pytest.raises(HsmUnavailable):
                await hsm.diagnostics()
        fake.mode = NORMAL
        with trio.fail_after(5):
            await hsm.pool.wait_ready(5)
            assert await hsm.echo(b"back") == b"back"


async def test_hsm_down_at_start_then_up(nursery: trio.Nursery, lmk: LmkSet) -> None:
    fake, addr = await _start_fake(nursery, lmk)
    fake.mode = CLOSE  # every connection is dropped at once, as by an HSM not ready yet
    async with open_hsm_client([addr], wait=False, timeout=0.2,
                               backoff_min=0.05, backoff_max=0.1) as hsm:
        with trio.fail_after(3), pytest.raises(HsmUnavailable):
            await hsm.echo(b"x")
        assert not hsm.pool.nodes[0].up
        fake.mode = NORMAL
        with trio.fail_after(5):
            await hsm.pool.wait_ready(5)
            assert await hsm.echo(b"up") == b"up"


async def test_client_rejects_bad_fields(hsm_port: int) -> None:
    async with open_hsm_client([f"{LOCALHOST}:{hsm_port}"]) as hsm:
        assert isinstance(hsm, HsmClient)
        with pytest.raises(ValueError):
            await hsm.translate_pin("U" + "0" * 31, "U" + "0" * 32, "0" * 16, "1" * 12)
        with pytest.raises(ValueError):
            await hsm.verify_pin_pvv("U" + "0" * 32, "U" + "0" * 32, "0" * 16, "123", "1", "1234")


async def test_cancelled_caller_leaves_no_pending_and_late_reply_is_harmless(
    nursery: trio.Nursery, lmk: LmkSet
) -> None:
    fake, addr = await _start_fake(nursery, lmk)
    async with open_hsm_client([addr], pool_size=1, timeout=2.0) as hsm:
        conn = hsm.pool.nodes[0].conns[0]
        fake.mode = SLOW
        with trio.move_on_after(0.05):  # the caller's own deadline, shorter than the HSM's
            await hsm.echo(b"late")
        assert conn.in_flight == 0
        fake.mode = NORMAL
        await trio.sleep(0.3)  # the late reply arrives and is dropped quietly
        assert await hsm.echo(b"next") == b"next"
        assert not conn.closed and hsm.pool.nodes[0].up
