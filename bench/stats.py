"""What a load run measured: latencies, response codes, errors, and their summary.

One ``Stats`` per run, written to by every simulated terminal on one event
loop (no locks needed). Latencies are kept raw, as seconds in an
``array('d')`` with the moment each answer arrived next to them, so the
summary's percentiles are exact (no histogram buckets) and the latency plot
can be drawn over time. A million samples cost 16 MB: bounded by the run's
duration times its rate, which the caller chooses.
"""

from __future__ import annotations

import time
from array import array
from collections import Counter
from dataclasses import dataclass, field

PERCENTILES = (("p50", 0.50), ("p90", 0.90), ("p99", 0.99), ("p999", 0.999))


def percentile(sorted_values: list[float] | array, q: float) -> float:
    """Nearest-rank percentile of already sorted values (0 when empty)."""
    if not sorted_values:
        return 0.0
    i = min(len(sorted_values) - 1, max(0, int(q * len(sorted_values) + 0.5) - 1))
    return sorted_values[i]


@dataclass
class Stats:
    started: float = field(default_factory=time.perf_counter)
    # Set when the measured window opens (after every terminal has signed on).
    window_start: float | None = None
    window_end: float | None = None
    latencies: array = field(default_factory=lambda: array("d"))
    at: array = field(default_factory=lambda: array("d"))
    codes: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    tolerated: Counter[str] = field(default_factory=Counter)
    approved_sales: int = 0
    requests: int = 0
    sign_ons: int = 0
    settlements_balanced: int = 0
    settlements: int = 0
    sign_on_latencies: list[float] = field(default_factory=list)

    def record(self, kind: str, rc: str | None, latency: float, now: float) -> None:
        """One answered request inside or outside the window (only inside is summarised)."""
        self.requests += 1
        if self.window_start is None or now < self.window_start:
            return
        if self.window_end is not None and now > self.window_end:
            return
        self.latencies.append(latency)
        self.at.append(now - self.window_start)
        self.codes[f"{kind}:{rc}"] += 1
        if kind == "sale" and rc == "00":
            self.approved_sales += 1

    def error(self, reason: str) -> None:
        self.errors[reason] += 1

    def summary(self) -> dict[str, object]:
        start = self.window_start if self.window_start is not None else self.started
        end = self.window_end if self.window_end is not None else time.perf_counter()
        seconds = max(end - start, 1e-9)
        lat = sorted(self.latencies)
        out: dict[str, object] = {
            "seconds": round(seconds, 3),
            "responses": len(lat),
            "responses_per_s": round(len(lat) / seconds, 1),
            "approved_sales": self.approved_sales,
            "approved_sales_per_s": round(self.approved_sales / seconds, 1),
        }
        for name, q in PERCENTILES:
            out[f"{name}_ms"] = round(percentile(lat, q) * 1000, 3)
        out["max_ms"] = round((lat[-1] if lat else 0.0) * 1000, 3)
        out["codes"] = dict(sorted(self.codes.items()))
        out["errors"] = sum(self.errors.values())
        out["error_kinds"] = dict(self.errors)
        out["tolerated"] = dict(self.tolerated)
        out["sign_ons"] = self.sign_ons
        sl = sorted(self.sign_on_latencies)
        out["sign_on_p99_ms"] = round(percentile(sl, 0.99) * 1000, 3)
        out["settlements"] = self.settlements
        out["settlements_balanced"] = self.settlements_balanced
        return out


def format_summary(s: dict[str, object]) -> str:
    lines = [
        f"window {s['seconds']} s: {s['responses']} responses, {s['responses_per_s']}/s; "
        f"approved sales {s['approved_sales']} ({s['approved_sales_per_s']}/s)",
        "latency ms: " + "  ".join(
            f"{k} {s[f'{k}_ms']}" for k in ("p50", "p90", "p99", "p999", "max")
        ),
        f"sign-ons {s['sign_ons']} (p99 {s['sign_on_p99_ms']} ms); settlements "
        f"{s['settlements_balanced']}/{s['settlements']} balanced",
        "codes: " + ", ".join(f"{k}={v}" for k, v in dict(s["codes"]).items()),  # type: ignore[call-overload]
        f"errors: {s['errors']} {s['error_kinds'] or ''}",
    ]
    if s.get("tolerated"):
        lines.append(f"tolerated (expected under injected faults): {s['tolerated']}")
    return "\n".join(lines)


def plot_latency(stats: Stats, path: str, title: str) -> None:
    """Latency of every answer against the time it arrived, to a PNG (needs matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")  # no display: write the file only
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4))
    ms = [v * 1000 for v in stats.latencies]
    ax.scatter(list(stats.at), ms, s=1, alpha=0.3)
    ax.set_xlabel("seconds into the measured window")
    ax.set_ylabel("latency (ms)")
    ax.set_yscale("log")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
