"""PNG of a comparison: TTFT CDF per variant, and TTFT over the run (mean per time window)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

# The backend must be chosen before pyplot is imported: no display is needed.
matplotlib.use("Agg")
import matplotlib.pyplot as plt

from bench.multi_round_qa import RequestRecord

TIME_WINDOWS = 30


def ttft_cdf(records: Sequence[RequestRecord]) -> tuple[list[float], list[float]]:
    """Sorted TTFTs of the successful requests and their cumulative fractions."""
    ttfts = sorted(r.ttft for r in records if r.ok and r.ttft is not None)
    return ttfts, [(i + 1) / len(ttfts) for i in range(len(ttfts))]


def ttft_over_time(
    records: Sequence[RequestRecord], duration: float, windows: int = TIME_WINDOWS
) -> tuple[list[float], list[float]]:
    """Mean TTFT of the successful requests launched in each of `windows` equal windows (empty ones skipped).

    Returns the windows' midpoints and means.
    """
    width = max(duration, 1e-9) / windows
    sums, counts = [0.0] * windows, [0] * windows
    for r in records:
        if r.ok and r.ttft is not None:
            i = min(int(r.launch_time / width), windows - 1)
            sums[i] += r.ttft
            counts[i] += 1
    points = [((i + 0.5) * width, sums[i] / counts[i]) for i in range(windows) if counts[i]]
    return [t for t, _ in points], [m for _, m in points]


def plot_comparison(
    runs: Sequence[tuple[str, Sequence[RequestRecord], float]], path: Path, title: str
) -> Path:
    """Write the two-panel PNG for (name, records, duration) runs; returns `path`."""
    fig, (cdf_ax, time_ax) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=90)
    for name, records, duration in runs:
        xs, ys = ttft_cdf(records)
        cdf_ax.step(xs, ys, where="post", label=name)
        ts, means = ttft_over_time(records, duration)
        time_ax.plot(ts, means, marker=".", label=name)
    cdf_ax.set(xscale="log", xlabel="TTFT (simulated s, log scale)", ylabel="fraction of requests")
    cdf_ax.set_title("TTFT CDF")
    cdf_ax.grid(True, which="both", alpha=0.3)
    time_ax.set(xlabel="request launch time (simulated s)", ylabel="mean TTFT (simulated s)")
    time_ax.set_title(f"TTFT over time (mean per 1/{TIME_WINDOWS} of the run)")
    time_ax.grid(True, alpha=0.3)
    time_ax.legend(fontsize="small")
    fig.suptitle(title, fontsize="medium")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
