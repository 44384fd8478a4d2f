"""Semantic-cache quality on the labelled pairs in bench/data/cache_eval: no LLM, no Redis.

`python -m bench.cache_eval [--thresholds 0.7,0.75,...] [--split test|dev|all] [--markdown]`

Each pair is two requests: `a` is answered and stored first, `b` arrives later. `b` is *served* a's answer
when, as in the semantic tier, `epp.cache.key.semantic_parts` puts both in one partition (tenant, model,
parameters, system prompt, conversation so far), the cosine similarity of their texts under
`epp.cache.semantic.embedder.load_embedder()` is at least the threshold, and `guards.check(b, a)` passes.
Three systems are compared: epp (partition + guards), epp without guards, and keying on the last message
alone (no partition, no guards: what a cache that embeds only the last message does). A should-hit pair
served counts for the cache; a trap served is an answer that is wrong for `b`.

The default thresholds are chosen on the dev split only, one per group: the one serving the most
should-hit pairs of the group while its traps answered wrong stay within the goal (single questions ≤ 2%,
conversations ≤ 5%). A query with earlier turns (any message before the last but the system prompt) is
judged at the conversation threshold, any other at the single one: a partition that already matches a whole
conversation is strong evidence, so a conversation can afford a lower one (what that costs is
conv_followup_trap). `--same-threshold` uses one threshold for both, as the tier did before. The tables
and the headline are reported on the split asked for (test by default).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from epp.cache.key import semantic_parts
from epp.cache.semantic import guards
from epp.cache.semantic.embedder import Embedder, load_embedder

DATA_DIR = Path(__file__).resolve().parent / "data" / "cache_eval"
FILES = ("single.jsonl", "conversation.jsonl")
GROUPS = ("single", "conversation")
SHOULD_HIT = {
    "single": ("paraphrase", "near_repeat"),
    "conversation": ("conv_paraphrase", "conv_near_repeat"),
}
TRAPS = {
    "single": ("negation", "entity_swap", "numbers_dates", "scope"),
    "conversation": ("conv_context_change", "conv_followup_trap"),
}
CATEGORIES = tuple(c for g in GROUPS for c in SHOULD_HIT[g] + TRAPS[g])
GOALS = {"single": (0.80, 0.02), "conversation": (0.85, 0.05)}  # (should-hit served ≥, traps wrong ≤)
SYSTEMS = ("epp", "epp-no-guards", "last-message")
DEFAULT_THRESHOLDS = (0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9)
TENANT = "cache-eval"


@dataclass(frozen=True, slots=True)
class Pair:
    id: str
    category: str
    expect: str  # "hit" | "miss"
    split: str  # "dev" | "test"
    a: dict[str, Any]
    b: dict[str, Any]

    @property
    def group(self) -> str:
        return "conversation" if self.category.startswith("conv_") else "single"


@dataclass(frozen=True, slots=True)
class Thresholds:
    """The tier's two thresholds: queries without and with earlier turns."""

    single: float
    conversation: float

    def __str__(self) -> str:
        return f"{self.single:.2f} single / {self.conversation:.2f} conversation"


@dataclass(frozen=True, slots=True)
class Scored:
    pair: Pair
    same_partition: bool
    similarity: float  # cosine of the two texts (-1 when either has no text to embed)
    guard: str | None  # the guard that rejects b against a, or None
    in_conversation: bool = False  # b has earlier turns: judged at the conversation threshold

    def served(self, system: str, threshold: float | Thresholds) -> bool:
        if isinstance(threshold, Thresholds):
            threshold = threshold.conversation if self.in_conversation else threshold.single
        if self.similarity < threshold:
            return False
        if system == "last-message":
            return True
        return self.same_partition and (system == "epp-no-guards" or self.guard is None)


def load_pairs(data_dir: Path = DATA_DIR) -> list[Pair]:
    pairs = []
    for name in FILES:
        for line in (data_dir / name).read_text(encoding="utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                pairs.append(
                    Pair(row["id"], row["category"], row["expect"], row["split"], row["a"], row["b"])
                )
    return pairs


def score(pairs: Sequence[Pair], embedder: Embedder) -> tuple[list[Scored], float]:
    """Every pair through the semantic path; also returns the guards' mean cost per check in µs."""
    parts = [(_parts(p.a, embedder), _parts(p.b, embedder)) for p in pairs]
    texts = sorted({part[1] for pa, pb in parts for part in (pa, pb) if part is not None})
    vectors = dict(zip(texts, _embed(embedder, texts), strict=True))
    scored, guard_s = [], 0.0
    for pair, (pa, pb) in zip(pairs, parts, strict=True):
        if pa is None or pb is None:
            scored.append(Scored(pair, False, -1.0, None))
            continue
        started = time.perf_counter()
        reason = guards.check(pb[1], pa[1])  # b is the query, a the stored candidate
        guard_s += time.perf_counter() - started
        similarity = float(np.dot(vectors[pa[1]], vectors[pb[1]]))
        scored.append(Scored(pair, pa[0] == pb[0], similarity, reason, has_history(pair.b)))
    return scored, guard_s / max(1, len(scored)) * 1e6


def has_history(body: dict[str, Any]) -> bool:
    """Whether the request has turns before its last message other than system prompts."""
    messages = body.get("messages") or []
    return any(isinstance(m, dict) and m.get("role") != "system" for m in messages[:-1])


def _parts(body: dict[str, Any], embedder: Embedder) -> tuple[str, str] | None:
    """(partition, text) as the tier sees them; None when the tier would not look the request up."""
    parts = semantic_parts("chat", TENANT, "", body)
    return parts if parts is not None and embedder.fits(parts[1]) else None


def _embed(embedder: Embedder, texts: list[str], batch: int = 32) -> list[Any]:
    rows: list[Any] = []
    for i in range(0, len(texts), batch):
        rows.extend(embedder.embed(texts[i : i + batch]))
    return rows


def rate(
    scored: Sequence[Scored], categories: Sequence[str], system: str, threshold: float | Thresholds
) -> float | None:
    """Share of the pairs of `categories` served; None without such pairs."""
    chosen = [s for s in scored if s.pair.category in categories]
    return sum(s.served(system, threshold) for s in chosen) / len(chosen) if chosen else None


def choose_threshold(
    dev: Sequence[Scored], thresholds: Sequence[float], groups: Sequence[str] = GROUPS
) -> float:
    """Most should-hit pairs of `groups` served by epp on `dev` with their traps within their goal.

    Ties go to the higher threshold; when no threshold meets the trap goals, the one with the fewest
    traps answered wrong."""
    hits = [c for g in groups for c in SHOULD_HIT[g]]

    def excess(t: float) -> float:
        return sum(max(0.0, (rate(dev, TRAPS[g], "epp", t) or 0.0) - GOALS[g][1]) for g in groups)

    within = [t for t in thresholds if excess(t) == 0.0]
    if not within:
        return min(thresholds, key=lambda t: (excess(t), -t))
    return max(within, key=lambda t: (rate(dev, hits, "epp", t) or 0.0, t))


def choose_thresholds(dev: Sequence[Scored], thresholds: Sequence[float], same: bool = False) -> Thresholds:
    """One threshold per group (`same`: one for both), each chosen as `choose_threshold`."""
    if same:
        both = choose_threshold(dev, thresholds)
        return Thresholds(both, both)
    return Thresholds(
        choose_threshold(dev, thresholds, ("single",)), choose_threshold(dev, thresholds, ("conversation",))
    )


# -- the report ---------------------------------------------------------------------------------------
def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], markdown: bool) -> str:
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]

    def fmt(row: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()

    return "\n".join([fmt(header), fmt(["-" * w for w in widths]), *(fmt(r) for r in rows)])


def headline(scored: Sequence[Scored], threshold: Thresholds, markdown: bool) -> str:
    rows = []
    for group in GROUPS:
        goal_hit, goal_trap = GOALS[group]
        for system in SYSTEMS:
            hit = rate(scored, SHOULD_HIT[group], system, threshold)
            trap = rate(scored, TRAPS[group], system, threshold)
            met = hit is not None and trap is not None and hit >= goal_hit and trap <= goal_trap
            goal = (
                f"≥ {goal_hit:.0%} / ≤ {goal_trap:.0%}: {'met' if met else 'missed'}"
                if system == "epp"
                else ""
            )
            rows.append([group, system, _pct(hit), _pct(trap), goal])
    header = ["set", "system", "should-hit served", "traps answered wrong", "goal"]
    return _table(header, rows, markdown)


def by_threshold(scored: Sequence[Scored], thresholds: Sequence[float], markdown: bool) -> str:
    header = ["threshold"] + [f"{g} {s} hit/trap" for g in GROUPS for s in SYSTEMS]
    rows = [
        [f"{t:.2f}"]
        + [
            f"{_pct(rate(scored, SHOULD_HIT[g], s, t))} / {_pct(rate(scored, TRAPS[g], s, t))}"
            for g in GROUPS
            for s in SYSTEMS
        ]
        for t in thresholds
    ]
    return _table(header, rows, markdown)


def by_category(scored: Sequence[Scored], thresholds: Sequence[float], system: str, markdown: bool) -> str:
    counts = Counter(s.pair.category for s in scored)
    header = ["category", "expect", "pairs"] + [f"{t:.2f}" for t in thresholds]
    rows = [
        [c, "hit" if c in SHOULD_HIT["single"] + SHOULD_HIT["conversation"] else "miss", str(counts[c])]
        + [_pct(rate(scored, (c,), system, t)) for t in thresholds]
        for c in CATEGORIES
        if counts[c]
    ]
    return _table(header, rows, markdown)


def guard_reasons(scored: Sequence[Scored], threshold: Thresholds) -> tuple[Counter[str], Counter[str]]:
    """Rejections among same-partition pairs above the threshold: (traps stopped, should-hits lost)."""
    above = [s for s in scored if s.same_partition and s.guard and s.served("epp-no-guards", threshold)]
    stopped = Counter(s.guard for s in above if s.pair.expect == "miss" and s.guard)
    lost = Counter(s.guard for s in above if s.pair.expect == "hit" and s.guard)
    return stopped, lost


def failures(scored: Sequence[Scored], threshold: Thresholds) -> list[str]:
    out = []
    for s in scored:
        wrong = s.served("epp", threshold) != (s.pair.expect == "hit")
        if wrong:
            last_a, last_b = s.pair.a["messages"][-1]["content"], s.pair.b["messages"][-1]["content"]
            why = f"guard {s.guard}" if s.guard else "partition" if not s.same_partition else ""
            out.append(f"{s.pair.id} {s.similarity:.3f} {why}: {last_a!r} | {last_b!r}")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cache_eval", description=__doc__.split("\n")[0])
    parser.add_argument("--thresholds", default=",".join(map(str, DEFAULT_THRESHOLDS)))
    parser.add_argument("--split", choices=("test", "dev", "all"), default="test")
    parser.add_argument("--markdown", action="store_true", help="markdown tables")
    parser.add_argument("--embedder", default="minilm-int8", help="a kind of epp.cache.semantic.embedder")
    parser.add_argument("--data", type=Path, default=DATA_DIR)
    parser.add_argument("--failures", action="store_true", help="list the pairs epp gets wrong")
    parser.add_argument(
        "--per-group-thresholds",
        action="store_true",
        help="choose a separate threshold for conversations on dev (default: one threshold for both, as "
        "the semantic tier uses; a per-group choice on dev did not carry over to test)",
    )
    args = parser.parse_args(argv)
    thresholds = sorted(float(t) for t in args.thresholds.split(","))

    pairs = load_pairs(args.data)
    scored, guard_us = score(pairs, load_embedder(args.embedder))
    dev = [s for s in scored if s.pair.split == "dev"]
    chosen = choose_thresholds(dev, thresholds, not args.per_group_thresholds)
    shown = [s for s in scored if args.split == "all" or s.pair.split == args.split]
    counts = Counter(s.pair.group for s in shown)
    md = args.markdown
    out = [
        f"semantic cache evaluation: split {args.split} ({counts['single']} single, "
        f"{counts['conversation']} conversation pairs), embedder {args.embedder}",
        f"default thresholds {chosen} (chosen on dev among {', '.join(f'{t:.2f}' for t in thresholds)})",
        "",
        f"## headline at thresholds {chosen}",
        headline(shown, chosen, md),
        "",
        "## should-hit served / traps answered wrong, per threshold",
        by_threshold(shown, thresholds, md),
    ]
    for system in SYSTEMS:
        out += ["", f"## per category, share served: {system}", by_category(shown, thresholds, system, md)]
    stopped, lost = guard_reasons(shown, chosen)
    out += [
        "",
        f"## guards at {chosen} (same partition, similarity ≥ threshold): {guard_us:.0f} µs per check",
        f"traps stopped: {sum(stopped.values())} {dict(stopped.most_common())}",
        f"should-hits lost: {sum(lost.values())} {dict(lost.most_common())}",
    ]
    if args.failures:
        out += ["", f"## pairs epp gets wrong at {chosen}", *failures(shown, chosen)]
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
