"""`python -m hsm serve` as a process, and the benchmark's measuring code (briefly)."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import trio

from bench import hsm_local
from bench.hsm import bench, report, start_server
from hsm.client import open_hsm_client

from .conftest import LOCALHOST


async def test_standalone_server_process() -> None:
    proc, address = start_server()
    try:
        async with open_hsm_client([address]) as hsm:
            assert (await hsm.diagnostics()).lmk_check_value == "7D22274C5745C5A1"
    finally:
        proc.terminate()
        proc.wait(5)


def test_cli_rejects_a_bad_lmk_file(tmp_path: Path) -> None:
    bad = tmp_path / "lmk.txt"
    bad.write_text("00-01 = 00\n")
    out = subprocess.run(
        [sys.executable, "-m", "hsm", "serve", "--listen", f"{LOCALHOST}:0", "--lmk", str(bad)],
        capture_output=True, text=True, timeout=20,
    )  # fmt: skip
    assert out.returncode == 2
    assert "line 1" in out.stderr


async def test_bench_measures(hsm_port: int) -> None:
    args = argparse.Namespace(callers=20, pool_size=2, duration=0.2, terminals=10)
    with trio.fail_after(20):
        result = await bench(args, f"{LOCALHOST}:{hsm_port}")
    for key in ("ca_per_s", "dc_per_s", "baseline_ca_per_s", "ca_ratio_vs_baseline"):
        assert isinstance(result[key], int | float) and result[key] > 0
    assert "CA pool / baseline" in report(result)


async def test_local_bench_measures() -> None:
    result = await hsm_local.bench(calls=50, terminals=5)
    assert isinstance(result["cpu_us_per_call"], float) and result["cpu_us_per_call"] > 0
    assert isinstance(result["core_us_per_call"], float) and result["core_us_per_call"] > 0
    link = await hsm_local.bench(50, 5, "link")
    core = await hsm_local.bench(50, 5, "core")
    assert link["cpu_us_per_call"] and link["core_us_per_call"] is None
    assert core["core_us_per_call"] and core["cpu_us_per_call"] is None
