"""The matrix's workload generators: determinism by seed, sizes, shared prefixes, trace mapping, bursts."""

import random
from collections.abc import Sequence
from pathlib import Path

import pytest

from bench.multi_round_qa.session import SessionManager
from bench.sim.profiles import get_profile
from bench.workloads.arrivals import on_off_arrivals, poisson_arrivals
from bench.workloads.catalog import SCALES, WORKLOADS, BuildContext, get_workload, parse_workloads
from bench.workloads.generators import bursty_users, document_questions, document_text, random_prompts
from bench.workloads.schedule import ScheduledRequest, offered_rate
from bench.workloads.trace import TraceError, block_words, load_trace, prompt_words, trace_schedule
from epp.tokenization.simulated import Tokenizer

SLICE = Path(__file__).parent / "fixtures" / "traces" / "mooncake-slice.jsonl"
A10 = get_profile("qwen2.5-7b-a10")
TOKENIZER = Tokenizer()


def ctx(seed: int = 0, salt: str = "", scale: str = "ci") -> BuildContext:
    return BuildContext(SCALES[scale], seed, salt, A10.model, A10)


def text_of(request: ScheduledRequest) -> str:
    return "\n".join(m["content"] for m in request.messages)


def common_prefix(a: Sequence[object], b: Sequence[object]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def test_random_prompts_are_deterministic_by_seed_sized_and_share_nothing() -> None:
    first = random_prompts(20, 5.0, 1000, 100, seed=1)
    assert first == random_prompts(20, 5.0, 1000, 100, seed=1)
    assert [text_of(r) for r in first] != [text_of(r) for r in random_prompts(20, 5.0, 1000, 100, seed=2)]
    tokens = [TOKENIZER.encode(text_of(r)) for r in first]
    assert all(1000 <= len(t) <= 1010 for t in tokens)
    # Beyond the "Request N:" opening no two prompts share even one 16-token block.
    assert max(common_prefix(a, b) for a in tokens for b in tokens if a is not b) < 16
    assert [r.at for r in first] == sorted(r.at for r in first) and first[0].at == 0.0


def test_documents_are_50k_characters_and_each_question_starts_with_its_whole_document() -> None:
    doc = document_text(0, 50_000, seed=0)
    assert 49_900 <= len(doc) <= 50_000
    requests = document_questions(3, 4, 1.0, 50_000, 60, seed=0)
    assert len(requests) == 12 and sorted(r.user_id for r in requests) == [0] * 4 + [1] * 4 + [2] * 4
    for r in requests:
        assert text_of(r).startswith(document_text(r.user_id, 50_000, seed=0))
    assert len({text_of(r) for r in requests}) == 12  # every question differs
    assert document_text(0, 50_000, seed=1) != doc


def test_poisson_and_on_off_arrivals_have_the_same_mean_rate() -> None:
    steady = poisson_arrivals(3000, 3.0, random.Random(0))
    bursts = on_off_arrivals(3000, 3.0, 4.0, 8.0, random.Random(0))
    assert len(steady) / steady[-1] == pytest.approx(3.0, rel=0.08)
    assert len(bursts) / bursts[-1] == pytest.approx(3.0, rel=0.08)
    assert all(t % 12.0 < 4.0 for t in bursts)  # nothing arrives in an off window
    assert bursts == on_off_arrivals(3000, 3.0, 4.0, 8.0, random.Random(0))
    with pytest.raises(ValueError, match="on_s"):
        on_off_arrivals(3, 1.0, 0.0, 1.0, random.Random(0))


def test_bursty_users_share_the_system_prompt_and_each_user_its_context() -> None:
    requests = bursty_users(200, 8, 3.0, 4.0, 8.0, 100, 200, 50, seed=0)
    systems = {r.messages[0]["content"] for r in requests}
    assert len(systems) == 1
    by_user: dict[int, set[str]] = {}
    for r in requests:
        by_user.setdefault(r.user_id, set()).add(r.messages[1]["content"].split("\n\n")[0])
    assert len(by_user) == 8 and all(len(contexts) == 1 for contexts in by_user.values())


def test_trace_rows_map_equal_block_ids_to_equal_token_blocks() -> None:
    rows = load_trace(SLICE)
    assert len(rows) == 40
    # The slice's one pair of requests with a common prefix of block ids.
    shared, i, j = max(
        (common_prefix(a.hash_ids, b.hash_ids), i, j)
        for i, a in enumerate(rows)
        for j, b in enumerate(rows)
        if i < j
    )
    assert shared == 44
    schedule = trace_schedule(rows, 64, 4.0, 1000, 200, seed=0)
    tokens_i, tokens_j = (TOKENIZER.encode(text_of(schedule[k])) for k in (i, j))
    # 44 equal ids -> 44 equal 64-token blocks; the next block (different ids) differs at once.
    assert 44 * 64 <= common_prefix(tokens_i, tokens_j) < 45 * 64
    for row, request in zip(rows, schedule, strict=True):
        words = prompt_words(row, 64, 1000, seed=0)
        assert len(TOKENIZER.encode(text_of(request))) == len(words)  # one token per word
        assert len(words) == min(max(1, round(row.input_length / 8)), 64 * len(row.hash_ids))
        for k, block_id in enumerate(row.hash_ids[: len(words) // 64]):
            assert words[64 * k : 64 * (k + 1)] == block_words(block_id, 64, seed=0)
    assert len(prompt_words(rows[0], 64, 3, seed=0)) <= 3 * 64


def test_trace_schedule_scales_time_to_the_asked_rate_and_caps_answers() -> None:
    rows = load_trace(SLICE)
    requests = trace_schedule(rows, 64, 4.0, 128, 50, seed=0)
    assert offered_rate(requests) == pytest.approx(4.0)
    assert all(1 <= r.max_tokens <= 50 for r in requests)
    salted = trace_schedule(rows, 64, 4.0, 128, 50, seed=0, salt="[run x] ")
    assert all(text_of(s).startswith("[run x] ") for s in salted)


def test_trace_errors_name_the_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "t.jsonl"
    bad.write_text('{"timestamp": 0, "input_length": 5, "output_length": 1, "hash_ids": [0]}\n{"x": 1}\n')
    with pytest.raises(TraceError, match=r"t\.jsonl: line 2"):
        load_trace(bad)
    with pytest.raises(TraceError, match="cannot read"):
        load_trace(tmp_path / "missing.jsonl")


def test_every_workload_builds_deterministically_at_the_ci_scale() -> None:
    assert [w.number for w in WORKLOADS.values()] == list(range(1, 9))
    for workload in WORKLOADS.values():
        plan = workload.build(ctx(seed=3))
        again = workload.build(ctx(seed=3))
        assert plan == again, workload.name
        assert (plan.multi_round is None) != (plan.schedule is None)
        if plan.schedule is not None:
            assert len(plan.schedule) >= 2
            assert workload.build(ctx(seed=4)).schedule != plan.schedule


def test_shared_system_prompt_is_over_2000_tokens_and_the_same_for_every_user() -> None:
    plan = get_workload("shared-system-prompt").build(ctx())
    assert plan.multi_round is not None and plan.multi_round.shared_system_prompt >= 2000
    manager = SessionManager(plan.multi_round, None)
    manager.step(0.0)
    systems = {s.conversation.messages[0]["content"] for s in manager.sessions.values()}
    assert len(manager.sessions) > 10 and len(systems) == 1


def test_cache_pressure_and_documents_overflow_one_pod_and_fit_the_fleet() -> None:
    cfg = get_workload("cache-pressure").build(ctx()).multi_round
    assert cfg is not None
    per_user = cfg.user_history_prompt + cfg.num_rounds * (cfg.answer_len + 25)
    assert cfg.num_users * per_user >= 3.5 * A10.kv_cache_tokens
    docs = get_workload("long-document-qa").build(ctx())
    assert docs.params["documents"] * 50_000 / 4 > A10.kv_cache_tokens
    # On a bigger KV cache the sizes grow with it.
    h100 = get_profile("qwen2.5-7b-h100")
    big = get_workload("cache-pressure").build(BuildContext(20.0, 0, "", h100.model, h100)).multi_round
    assert big is not None and big.num_users > 5 * cfg.num_users


def test_salt_opens_every_prompt_of_multi_round_workloads() -> None:
    plan = get_workload("multi-round-qa").build(ctx(salt="[run abc] "))
    assert plan.multi_round is not None
    manager = SessionManager(plan.multi_round, None)
    orders = manager.step(0.0)
    assert orders and all(o.messages[0]["content"].startswith("[run abc] ") for o in orders)
    no_system = get_workload("cache-pressure").build(ctx(salt="[run abc] ")).multi_round
    assert no_system is not None
    orders = SessionManager(no_system, None).step(0.0)
    assert orders and all(o.messages[0]["content"].startswith("[run abc] User") for o in orders)


def test_lora_mix_users_name_adapters_and_the_fleet_serves_two_per_batch() -> None:
    workload = get_workload("7")
    assert workload.max_loras == 2 and len(workload.lora_modules) == 4
    plan = workload.build(ctx())
    assert plan.multi_round is not None
    manager = SessionManager(plan.multi_round, None)
    orders = manager.step(0.0)
    assert {s.model for s in manager.sessions.values()} == set(workload.lora_modules)
    assert orders and all(o.model in workload.lora_modules for o in orders)


def test_workload_names_and_numbers_parse_and_bad_ones_are_named() -> None:
    assert [w.name for w in parse_workloads("5,shared-system-prompt")] == [
        "shared-system-prompt",
        "no-sharing",
    ]
    assert len(parse_workloads("all")) == 8
    with pytest.raises(ValueError, match="unknown workload 'nope'; known: multi-round-qa"):
        parse_workloads("nope")
