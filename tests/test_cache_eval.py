"""The semantic-cache evaluation set (bench/data/cache_eval) and its harness (bench.cache_eval).

Checks the set's format and size and that the pipeline behaves; never the headline numbers (those are
reported, not asserted).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from bench import cache_eval
from bench.cache_eval import CATEGORIES, DATA_DIR, SHOULD_HIT, TRAPS, Pair, Scored, load_pairs, score
from epp.cache.key import semantic_parts

PAIRS = load_pairs()


def _last(body: dict[str, object]) -> str:
    messages = body["messages"]
    assert isinstance(messages, list)
    content = messages[-1]["content"]
    assert isinstance(content, str)
    return content


def test_lines_have_the_documented_fields() -> None:
    for name in cache_eval.FILES:
        for line in (DATA_DIR / name).read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            assert set(row) == {"id", "category", "expect", "split", "a", "b"}
            assert row["category"] in CATEGORIES and row["split"] in ("dev", "test")
            hit = any(row["category"] in SHOULD_HIT[g] for g in SHOULD_HIT)
            assert row["expect"] == ("hit" if hit else "miss")
            assert (name == "conversation.jsonl") == row["category"].startswith("conv_")
            for body in (row["a"], row["b"]):
                assert isinstance(body["model"], str) and body["messages"][-1]["role"] == "user"
                assert all(m["role"] in ("system", "user", "assistant") for m in body["messages"])


def test_counts() -> None:
    ids = [p.id for p in PAIRS]
    assert len(ids) == len(set(ids))
    counts = Counter(p.category for p in PAIRS)
    singles = [c for c in CATEGORIES if not c.startswith("conv_")]
    assert sum(counts[c] for c in singles) >= 300
    assert all(counts[c] >= 40 for c in singles), counts
    assert sum(counts[c] for c in CATEGORIES if c.startswith("conv_")) >= 120
    assert all(counts[c] >= 40 for c in CATEGORIES), counts


def test_splits_are_stratified_halves() -> None:
    for category in CATEGORIES:
        splits = Counter(p.split for p in PAIRS if p.category == category)
        assert abs(splits["dev"] - splits["test"]) <= 1, (category, splits)


def test_texts_are_varied() -> None:
    """Hand-written, not one template: few pairs share their wording."""
    texts = [_last(p.a) for p in PAIRS if not p.category.startswith("conv_")]
    assert len(set(texts)) >= 0.9 * len(texts)
    openings = Counter(" ".join(t.split()[:3]).lower() for t in texts)
    assert len(openings) >= 0.4 * len(texts)  # "how do i" is common in questions, but not a template
    assert openings.most_common(1)[0][1] <= 0.25 * len(texts)


def test_conversation_pairs_differ_where_their_category_says() -> None:
    for p in PAIRS:
        if not p.category.startswith("conv_"):
            continue
        pa = semantic_parts("chat", "t", "", p.a)
        pb = semantic_parts("chat", "t", "", p.b)
        assert pa is not None and pb is not None
        if p.category == "conv_context_change":
            assert _last(p.a) == _last(p.b) and pa[0] != pb[0], p.id
        else:
            assert len(p.a["messages"]) >= 3 and pa[0] == pb[0], p.id
            assert p.a["messages"][:-1] == p.b["messages"][:-1], p.id


class BagOfWords:
    """A deterministic stand-in embedder: hashed word counts, L2-normalised."""

    dim = 256
    name = "test/bag-of-words"

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in text.lower().split():
                out[row, int(hashlib.sha256(word.encode()).hexdigest(), 16) % self.dim] += 1.0
            out[row] /= max(1e-9, float(np.linalg.norm(out[row])))
        return out

    def fits(self, text: str) -> bool:
        return len(text.split()) < 200


def _subset(per_category: int = 4) -> list[Pair]:
    seen: Counter[str] = Counter()
    out = []
    for p in PAIRS:
        if seen[p.category] < per_category:
            seen[p.category] += 1
            out.append(p)
    return out


def test_pipeline_on_a_subset() -> None:
    pairs = _subset()
    identical = [Pair(f"same-{p.id}", "near_repeat", "hit", "dev", p.a, p.a) for p in pairs[:6]]
    scored, guard_us = score(pairs + identical, BagOfWords())
    assert guard_us >= 0
    by_id = {s.pair.id: s for s in scored}
    for p in identical:  # the same request is always served, by every system
        s = by_id[p.id]
        assert s.same_partition and s.guard is None and s.similarity == pytest.approx(1.0, abs=1e-5)
        assert all(s.served(system, 0.99) for system in cache_eval.SYSTEMS)
    for s in scored:
        if s.pair.category == "conv_context_change":  # the last message is identical: only the partition
            assert not s.same_partition and s.similarity == pytest.approx(1.0, abs=1e-5)
            assert not s.served("epp", 0.5) and not s.served("epp-no-guards", 0.5)
            assert s.served("last-message", 0.5)
        if s.pair.category in ("negation", "numbers_dates"):
            assert s.guard is not None and not s.served("epp", -1.0)


def test_served_and_rates() -> None:
    pair = PAIRS[0]
    s = Scored(pair, same_partition=True, similarity=0.8, guard="number")
    assert not s.served("epp", 0.7) and s.served("epp-no-guards", 0.7) and s.served("last-message", 0.7)
    assert not s.served("epp-no-guards", 0.9)
    other = Scored(pair, same_partition=False, similarity=0.95, guard=None)
    assert not other.served("epp", 0.9) and other.served("last-message", 0.9)
    assert cache_eval.rate([s, other], (pair.category,), "last-message", 0.85) == 0.5
    assert cache_eval.rate([s], ("no-such-category",), "epp", 0.5) is None


def test_threshold_is_chosen_within_the_trap_goals() -> None:
    hit, trap = PAIRS[0], next(p for p in PAIRS if p.category == "negation")
    assert hit.category in SHOULD_HIT["single"] and trap.category in TRAPS["single"]
    dev = [Scored(hit, True, 0.7, None), Scored(trap, True, 0.65, None)]
    # 0.6 serves the hit and the trap (traps 100% wrong); 0.68 serves the hit only; 0.8 neither.
    assert cache_eval.choose_threshold(dev, [0.6, 0.68, 0.8]) == 0.68
    assert cache_eval.choose_threshold(dev, [0.6]) == 0.6  # nothing within the goals: the fewest traps


@pytest.mark.slow
def test_main_with_the_real_embedder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The shipped path (load_embedder, markdown report) on a small data folder."""
    monkeypatch.setenv("EPP_MODEL_DIR", str(tmp_path / "models"))  # build the ONNX files here, not in ~
    for name in cache_eval.FILES:
        lines = (DATA_DIR / name).read_text(encoding="utf-8").splitlines()
        keep = [line for line in lines if json.loads(line)["id"].endswith(("-001", "-002", "-003", "-004"))]
        (tmp_path / name).write_text("\n".join(keep) + "\n", encoding="utf-8")
    assert cache_eval.main(["--data", str(tmp_path), "--split", "all", "--markdown", "--failures"]) == 0
    out = capsys.readouterr().out
    assert "## headline at threshold" in out and "| single | epp |" in out
    assert "| conv_context_change | miss | 4 | 0.0% |" in out.replace("0.0% | 0.0%", "0.0%")


def test_conversations_get_their_own_threshold() -> None:
    single = next(p for p in PAIRS if p.category == "paraphrase")
    conv_hit = next(p for p in PAIRS if p.category == "conv_paraphrase")
    conv_trap = next(p for p in PAIRS if p.category == "conv_followup_trap")
    assert cache_eval.has_history(conv_hit.b) and not cache_eval.has_history(single.b)
    dev = [
        Scored(single, True, 0.7, None, False),
        Scored(conv_hit, True, 0.5, None, True),
        Scored(conv_trap, True, 0.45, None, True),
    ]
    both = cache_eval.Thresholds(0.65, 0.48)
    assert dev[0].served("epp", both) and dev[1].served("epp", both) and not dev[2].served("epp", both)
    assert not dev[1].served("epp", 0.65)
    chosen = cache_eval.choose_thresholds(dev, [0.4, 0.48, 0.6, 0.65, 0.75])
    assert chosen == cache_eval.Thresholds(0.65, 0.48)
    assert cache_eval.choose_thresholds(dev, [0.48, 0.65], same=True) == cache_eval.Thresholds(0.48, 0.48)
