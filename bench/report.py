"""What the end-to-end benchmarks share: their common options and how a report is published."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path


def add_run_options(p: argparse.ArgumentParser) -> None:
    """--duration, --warmup, --out, --json and --quick, as every such benchmark takes them."""
    p.add_argument("--duration", type=float, default=10.0, help="seconds per measured run")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds of load before each window")
    p.add_argument("--out", default="bench/results", help="where the JSON and markdown go")
    p.add_argument("--json", action="store_true", help="print the JSON instead of the markdown")
    p.add_argument("--quick", action="store_true", help="a seconds-long smoke run")


def stamp() -> str:
    """The run's name: its UTC start time."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())


def publish(out: str, name: str, result: dict[str, object], md: str, as_json: bool,
            say: Callable[[str], None]) -> None:  # fmt: skip
    """Write ``<name>-<started>.json`` and ``.md`` under ``out``; print one of them."""
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    base = out_dir / f"{name}-{result['started']}"
    base.with_suffix(".json").write_text(json.dumps(result, indent=2))
    base.with_suffix(".md").write_text(md)
    print(json.dumps(result) if as_json else md)
    say(f"{name}: written {base}.json and .md")
