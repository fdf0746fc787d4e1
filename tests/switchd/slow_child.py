"""A child for tests/switchd/test_childproc.py: it opens slowly when told to, then echoes."""

from __future__ import annotations

import time

from switchd import childproc


class _Echo(childproc.Handler):
    def __init__(self, hello: bytes) -> None:
        if hello == b"slow":
            time.sleep(2.0)  # longer than the test's start timeout

    def handle(self, body: bytes) -> bytes:
        return b"pong:" + body


def child_main(fd: int) -> int:
    return childproc.serve(fd, "slow child", _Echo)
