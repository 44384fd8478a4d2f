"""The block-hash memo: the same hashes as hashing from scratch, fewer blocks hashed, bounded memory."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from epp.scheduling.types import LLMRequest, SchedulingContext
from scorers.block_hash_memo import BlockHashMemo, common_blocks
from scorers.prefix_cache_scorer import PrefixCacheScorer
from scorers.prefix_index import block_hashes

MODEL = "llama"
BLOCK = 64


def blocks(*names: str) -> str:
    """One 64-character block per name."""
    return "".join(n.ljust(BLOCK, ".") for n in names)


def test_hashes_continue_a_known_chain() -> None:
    prompt = blocks("a", "b", "c", "d") + "tail"
    full = block_hashes(prompt, MODEL, BLOCK, 256)
    assert block_hashes(prompt, MODEL, BLOCK, 256, known=full[:2]) == full
    assert block_hashes(prompt, MODEL, BLOCK, 3, known=full) == full[:3]
    salted = block_hashes(prompt, MODEL, BLOCK, 256, "s")
    assert block_hashes(prompt, MODEL, BLOCK, 256, "s", known=salted[:1]) == salted != full


def test_common_blocks_counts_whole_leading_blocks() -> None:
    a = blocks("a", "b", "c", "d")
    assert common_blocks(a, a, BLOCK) == 4
    assert common_blocks(a, blocks("a", "b", "x", "d"), BLOCK) == 2
    assert common_blocks(a, blocks("a", "b"), BLOCK) == 2
    assert common_blocks(a, a[:-1], BLOCK) == 3  # a partial block is not a block
    assert common_blocks(a, blocks("z"), BLOCK) == 0
    assert common_blocks(a, blocks("a", "b", "c", "x"), BLOCK, known=1) == 3


def test_a_growing_conversation_hashes_only_its_new_blocks() -> None:
    memo = BlockHashMemo()
    history = blocks("system", "user 1")
    for turn in range(2, 8):
        history += blocks(f"answer {turn}", f"user {turn}")
        assert memo.hashes(history, MODEL, BLOCK, 256) == block_hashes(history, MODEL, BLOCK, 256)
    assert memo.hashed_blocks == 14  # 4 in the first call, then the two new blocks of each turn
    assert memo.reused_blocks == 4 + 6 + 8 + 10 + 12  # all the earlier turn's blocks


def test_a_text_agreeing_at_a_later_block_only_is_not_reused_from_there() -> None:
    # The most recent text agrees with the prompt for 2 blocks; the older one agrees at block 3 and on, but
    # not at block 2. Taking the older one's hashes from block 3 would chain the wrong history.
    memo = BlockHashMemo()
    memo.hashes(blocks("s", "p", "b", "c", "d", "e"), MODEL, BLOCK, 256)
    memo.hashes(blocks("s", "a", "x"), MODEL, BLOCK, 256)
    prompt = blocks("s", "a", "b", "c", "d", "e")
    assert memo.hashes(prompt, MODEL, BLOCK, 256) == block_hashes(prompt, MODEL, BLOCK, 256)
    assert memo.reused_blocks == 1 + 2


def test_model_salt_and_block_size_keep_their_own_chains() -> None:
    memo = BlockHashMemo()
    prompt = blocks("a", "b", "c")
    for model, salt, size in [
        (MODEL, None, BLOCK),
        ("other", None, BLOCK),
        (MODEL, "x", BLOCK),
        (MODEL, None, 32),
    ]:
        assert memo.hashes(prompt, model, size, 256, salt) == block_hashes(prompt, model, size, 256, salt)
    assert memo.reused_blocks == 0


def test_results_are_fresh_lists() -> None:
    memo = BlockHashMemo()
    prompt = blocks("a", "b")
    first = memo.hashes(prompt, MODEL, BLOCK, 256)
    first.clear()
    assert memo.hashes(prompt, MODEL, BLOCK, 256) == block_hashes(prompt, MODEL, BLOCK, 256)


def test_memory_is_bounded_by_characters_and_texts_per_group() -> None:
    memo = BlockHashMemo(max_chars=10 * BLOCK * 4, per_group=2)
    rng = random.Random(0)
    for i in range(200):
        prompt = blocks(f"g{rng.randrange(8)}", f"u{i}", "x", "y")
        assert memo.hashes(prompt, MODEL, BLOCK, 256) == block_hashes(prompt, MODEL, BLOCK, 256)
        assert memo.chars <= memo.max_chars
        assert all(len(group) <= 2 for group in memo._groups.values())
    assert memo.chars == sum(len(t) for g in memo._groups.values() for t, _ in g)


def test_bad_bounds_are_refused() -> None:
    with pytest.raises(ValueError, match="positive"):
        BlockHashMemo(max_chars=0)


# Prompts over a few whole blocks share prefixes often, and sometimes agree at later blocks only.
_block = st.sampled_from([blocks(c) for c in "abc"] + ["é" * BLOCK])
_prompt = st.builds(lambda bs, tail: "".join(bs) + tail, st.lists(_block, max_size=12), st.text(max_size=70))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(_prompt, st.sampled_from([None, "s"])), min_size=1, max_size=30), st.integers(1, 8))
def test_memo_equals_hashing_from_scratch(calls: list[tuple[str, str | None]], max_blocks: int) -> None:
    memo = BlockHashMemo(max_chars=20 * BLOCK, per_group=3)
    for prompt, salt in calls:
        assert memo.hashes(prompt, MODEL, BLOCK, max_blocks, salt) == block_hashes(
            prompt, MODEL, BLOCK, max_blocks, salt
        )


def test_prefix_scorer_hashes_through_its_memo() -> None:
    scorer = PrefixCacheScorer()
    system = blocks(*(f"system {i}" for i in range(20)))
    for user in range(3):
        prompt = system + blocks(f"user {user}")
        ctx = SchedulingContext(
            LLMRequest(request_id=f"r{user}", model=MODEL, target_model=MODEL, prompt=prompt)
        )
        assert scorer.cycle_match(ctx).hashes == block_hashes(prompt, MODEL, BLOCK, 256)
    assert scorer.hash_memo.reused_blocks == 2 * 20
