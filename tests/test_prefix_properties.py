"""Property tests of the prefix index: prefix matches after a request is sent, LRU bounds under random
inserts, and a consistent global map under any mix of insert, remove, forget and resize."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from epp.datastore import Endpoint, MetricsSnapshot
from epp.scheduling.types import Candidate, LLMRequest, SchedulingContext
from scorers.prefix_cache_scorer import PrefixCacheScorer
from scorers.prefix_index import PrefixIndex

PODS = [Candidate(Endpoint(n, "127.0.0.1", 8000), MetricsSnapshot(0, 0, 0.0), 0) for n in ("a", "b", "c")]
prompts = st.text(alphabet=st.characters(codec="utf-8"), max_size=1500) | st.text(
    alphabet="ab", max_size=1500
)


def ctx(prompt: str, model: str = "m") -> SchedulingContext:
    return SchedulingContext(LLMRequest("r", model, model, prompt))


@settings(max_examples=200, deadline=None)
@given(
    prompt=prompts,
    cut=st.floats(min_value=0.0, max_value=1.0),
    block_size=st.sampled_from([1, 5, 64]),
    max_blocks=st.integers(min_value=1, max_value=300),
    other=prompts,
)
def test_any_prefix_of_a_routed_prompt_matches_fully_on_its_pod(
    prompt: str, cut: float, block_size: int, max_blocks: int, other: str
) -> None:
    scorer = PrefixCacheScorer(block_size=block_size, max_prefix_blocks=max_blocks, auto_size_lru=False)
    scorer.pre_request(ctx(prompt), PODS[0].endpoint)
    scorer.pre_request(ctx(other, model="another-model"), PODS[1].endpoint)  # same text elsewhere: no count

    q = prompt[: int(len(prompt) * cut)]
    query = ctx(q)
    ratios = scorer.match_ratios(query, PODS)
    expected_blocks = min(len(q) // block_size, max_blocks)
    assert scorer.total_blocks(query) == expected_blocks
    assert scorer.matched_blocks(query).get("a", 0) == expected_blocks
    assert ratios == {"a": 1.0 if expected_blocks else 0.0, "b": 0.0, "c": 0.0}


@settings(max_examples=200, deadline=None)
@given(
    capacities=st.fixed_dictionaries({"a": st.integers(1, 12), "b": st.integers(1, 12)}),
    inserts=st.lists(
        st.tuples(st.sampled_from(["a", "b"]), st.lists(st.integers(0, 40), max_size=15)),
        max_size=40,
    ),
)
def test_lru_stays_within_capacity_and_keeps_most_recent(
    capacities: dict[str, int], inserts: list[tuple[str, list[int]]]
) -> None:
    index = PrefixIndex(default_capacity=1000)
    for pod, cap in capacities.items():
        index.set_capacity(pod, cap)
    model: dict[str, list[int]] = {"a": [], "b": []}  # reference LRU, least recent first
    for pod, hashes in inserts:
        index.insert(pod, hashes)
        ref = model[pod]
        for h in reversed(hashes):
            if h in ref:
                ref.remove(h)
            ref.append(h)
        del ref[: max(0, len(ref) - capacities[pod])]

        assert index.size(pod) <= capacities[pod]
        assert index.entries(pod) == ref
        # the most recent distinct entries of this insert survive, the leading ones first
        distinct = list(dict.fromkeys(hashes))
        survivors = distinct[: capacities[pod]]
        assert all(index.holds(pod, h) for h in survivors)

    for pod in ("a", "b"):
        held = set(index.entries(pod))
        assert {h for h in range(41) if index.holds(pod, h)} == held


POD_NAMES = [f"pod-{i}" for i in range(12)]
operations = st.lists(
    st.one_of(
        st.tuples(st.just("insert"), st.sampled_from(POD_NAMES), st.lists(st.integers(0, 12), max_size=12)),
        st.tuples(st.just("forget"), st.sampled_from(POD_NAMES), st.just([])),
        st.tuples(st.just("resize"), st.sampled_from(POD_NAMES), st.lists(st.integers(1, 10), max_size=1)),
        st.tuples(st.just("remove"), st.sampled_from(POD_NAMES), st.lists(st.integers(0, 12), max_size=6)),
    ),
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(ops=operations, query=st.lists(st.integers(0, 12), max_size=12))
def test_match_equals_naive_longest_prefix_per_pod(
    ops: list[tuple[str, str, list[int]]], query: list[int]
) -> None:
    index = PrefixIndex(default_capacity=8)
    for op, pod, arg in ops:
        if op == "insert":
            index.insert(pod, arg)
        elif op == "forget":
            index.forget(pod)
        elif op == "remove":
            index.remove(pod, arg)
        else:
            index.set_capacity(pod, arg[0] if arg else None)
    expected = {}
    for pod in POD_NAMES:
        held = set(index.entries(pod))
        n = 0
        while n < len(query) and query[n] in held:
            n += 1
        if n:
            expected[pod] = n
    assert index.match(query) == expected


@settings(max_examples=200, deadline=None)
@given(
    before=st.lists(st.integers(0, 30), max_size=20),
    request=st.lists(st.integers(0, 30), max_size=20),
    capacity=st.integers(1, 40),
)
def test_remove_of_inserted_hashes_restores_what_the_pod_held(
    before: list[int], request: list[int], capacity: int
) -> None:
    index = PrefixIndex(default_capacity=capacity)
    index.insert("a", before)
    index.insert("b", request)  # another pod's copies must survive a's removal
    held_before = set(index.entries("a"))
    added = index.insert("a", request)
    assert set(added) == set(index.entries("a")) - held_before  # exactly the new, still-held hashes
    index.remove("a", added)
    assert set(index.entries("a")) <= held_before  # eviction by the insert may have cost older entries
    assert set(index.entries("a")) == {h for h in held_before if index.holds("a", h)}
    for h in range(31):
        holders = {pod for pod in ("a", "b") if h in index.entries(pod)}
        assert {pod for pod in ("a", "b") if index.holds(pod, h)} == holders
    assert set(index._holders) == set(index.entries("a")) | set(index.entries("b"))
