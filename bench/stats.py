"""Percentiles, per-round summaries and the printed table."""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Sequence
from typing import Any


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (no interpolation: a p99 is a latency that was actually observed)."""
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def side_summary(rounds: Sequence[Sequence[float]]) -> dict[str, float]:
    """Median over rounds of each round's p50, p99 and operations per second (latencies in seconds)."""
    return {
        "p50_ms": statistics.median(percentile(r, 0.50) for r in rounds) * 1000,
        "p99_ms": statistics.median(percentile(r, 0.99) for r in rounds) * 1000,
        "ops_per_s": statistics.median(len(r) / sum(r) for r in rounds),
        "samples": sum(len(r) for r in rounds),
    }


def paired_ratio(handler_rounds: Sequence[Sequence[float]], raw_rounds: Sequence[Sequence[float]]) -> float:
    """Median over rounds of handler p50 / raw p50: each round's pair saw the same machine state."""
    return statistics.median(
        percentile(h, 0.5) / percentile(r, 0.5) for h, r in zip(handler_rounds, raw_rounds, strict=True)
    )


def paired_ratio_interval(
    handler_rounds: Sequence[Sequence[float]], raw_rounds: Sequence[Sequence[float]], *, resamples: int = 1000
) -> tuple[float, float]:
    """A 95% bootstrap interval for `paired_ratio`: the pairs of each round are resampled together
    (a pair's two calls saw the same moment of the machine), and the ratio computed again. A target
    inside the interval is at the edge: another run of the same tree could land on either side."""
    draw = random.Random(0)
    rounds = [list(zip(h, r, strict=True)) for h, r in zip(handler_rounds, raw_rounds, strict=True)]
    ratios = []
    for _ in range(resamples):
        per_round = []
        for pairs in rounds:
            chosen = draw.choices(pairs, k=len(pairs))
            per_round.append(percentile([h for h, _ in chosen], 0.5) / percentile([r for _, r in chosen], 0.5))
        ratios.append(statistics.median(per_round))
    ratios.sort()
    return ratios[int(0.025 * resamples)], ratios[int(0.975 * resamples) - 1]


def median_interval(values: Sequence[float], *, resamples: int = 4000) -> tuple[float, float]:
    """A 95% bootstrap interval for the median of `values`: how far the median of this many samples
    could have landed on another run of the same machine state. Seeded, so the same samples print
    the same interval."""
    draw = random.Random(0)
    medians = sorted(statistics.median(draw.choices(values, k=len(values))) for _ in range(resamples))
    return medians[int(0.025 * resamples)], medians[int(0.975 * resamples) - 1]


def render_table(rows: Sequence[dict[str, Any]]) -> str:
    header = (
        "| case | handler p50 ms | handler p99 ms | handler ops/s | raw p50 ms | raw p99 ms | raw ops/s "
        "| handler/raw (95% interval) | target | | client CPU ms/op handler : raw | storage calls handler : raw |"
    )
    lines = [header, "|" + "---|" * 12]
    for row in rows:
        h, r = row["handler"], row["raw"]
        cpu = f"{h['cpu_ms']:.2f} : {r['cpu_ms']:.2f}" if "cpu_ms" in h else "-"
        calls = row.get("storage_calls")
        calls_text = f"{calls['handler']:.1f} : {calls['raw']:.1f}" if calls else "-"
        lines.append(
            f"| {row['case']} | {h['p50_ms']:.2f} | {h['p99_ms']:.2f} | {h['ops_per_s']:.0f} "
            f"| {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['ops_per_s']:.0f} "
            f"| {_ratio_text(row)} | {row['target_text']} | {row['verdict']} | {cpu} | {calls_text} |"
        )
    return "\n".join(lines)


def _ratio_text(row: dict[str, Any]) -> str:
    interval = row.get("ratio_interval")
    if not interval:
        return f"{row['ratio']:.3f}x"
    return f"{row['ratio']:.3f}x ({interval[0]:.3f}-{interval[1]:.3f})"
