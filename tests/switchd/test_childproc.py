"""switchd.childproc: a child that fails to start leaves nothing behind."""

from __future__ import annotations

import pytest

from switchd import childproc


async def test_a_child_that_starts_too_slowly_is_not_left_behind(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(childproc, "START_TIMEOUT_S", 0.5)
    child = childproc.Child("tests.switchd.slow_child", "slow child")
    with pytest.raises(childproc.ChildLost, match="did not start"):
        await child.start(b"slow")
    # Killed and forgotten: its late READY cannot pass for the reply to a
    # request (the ledger's writer receives right after a failed restart).
    assert not child.running and child.pid is None
    with pytest.raises(childproc.ChildLost, match="not running"):
        await child.receive()
    await child.start(b"fast")
    try:
        assert await child.call(b"ping") == b"pong:ping"
    finally:
        await child.aclose()
