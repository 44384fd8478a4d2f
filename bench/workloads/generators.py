"""Request lists of the open-loop workloads: random prompts, long-document QA, bursty users.

Every generator is a pure function of its arguments: the same seed gives the same requests, texts and
times, so each variant and each run with that seed sees the same workload. `salt` opens every prompt (runs
on real pods that cannot reset their prefix caches use a salt per run so no run reuses another's blocks).
"""

from __future__ import annotations

import random

from bench.multi_round_qa.prompts import CHARS_PER_TOKEN, ChatMessage, filler_text
from bench.workloads.arrivals import on_off_arrivals, poisson_arrivals
from bench.workloads.schedule import ScheduledRequest


def _user(text: str) -> list[ChatMessage]:
    return [{"role": "user", "content": text}]


def random_prompts(
    count: int, rate: float, prompt_tokens: int, answer_len: int, seed: int, salt: str = ""
) -> list[ScheduledRequest]:
    """Poisson arrivals of prompts that share nothing: each its own words from its first token on."""
    rng = random.Random(f"random-prompts-{seed}")
    times = poisson_arrivals(count, rate, rng)
    requests = []
    for i, at in enumerate(times):
        text = f"{salt}Request {i}: " + filler_text(prompt_tokens, random.Random(f"random-{seed}-{i}"))
        requests.append(ScheduledRequest(at, i, _user(text), answer_len))
    return requests


def document_text(doc_id: int, chars: int, seed: int) -> str:
    """A document of about `chars` characters (the ~4 characters per token rule), distinct per id and seed."""
    header = f"Document {doc_id}.\n"
    words = max(1, (chars - len(header)) // CHARS_PER_TOKEN)
    return header + filler_text(words, random.Random(f"document-{seed}-{doc_id}"))


def document_questions(
    documents: int,
    questions_per_document: int,
    rate: float,
    document_chars: int,
    answer_len: int,
    seed: int,
    salt: str = "",
) -> list[ScheduledRequest]:
    """Long-document QA: each request is one whole document then a question about it.

    The documents' questions are shuffled together and arrive as a Poisson process; a document's requests
    share its whole text as a prefix (user_id is the document).
    """
    rng = random.Random(f"documents-{seed}")
    texts = [salt + document_text(d, document_chars, seed) for d in range(documents)]
    asks = [(d, q) for d in range(documents) for q in range(questions_per_document)]
    rng.shuffle(asks)
    times = poisson_arrivals(len(asks), rate, rng)
    return [
        ScheduledRequest(
            at, d, _user(f"{texts[d]}\n\nQuestion {q}: what does part {q} of this document say?"), answer_len
        )
        for at, (d, q) in zip(times, asks, strict=True)
    ]


def bursty_users(
    count: int,
    users: int,
    mean_rate: float,
    on_s: float,
    off_s: float,
    system_tokens: int,
    context_tokens: int,
    answer_len: int,
    seed: int,
    salt: str = "",
) -> list[ScheduledRequest]:
    """On/off bursts of questions from `users` users, each with its own long context after a shared system
    prompt; a user is drawn at random for each request, so affinity matters and bursts pile up queues."""
    rng = random.Random(f"bursty-{seed}")
    times = on_off_arrivals(count, mean_rate, on_s, off_s, rng)
    system = salt + filler_text(system_tokens, random.Random(f"bursty-system-{seed}"))
    contexts = [
        f"User {u} context: " + filler_text(context_tokens, random.Random(f"bursty-user-{seed}-{u}"))
        for u in range(users)
    ]
    requests = []
    for i, at in enumerate(times):
        u = rng.randrange(users)
        messages: list[ChatMessage] = [{"role": "system", "content": system}] if system else []
        messages.append({"role": "user", "content": f"{contexts[u]}\n\nQuestion {i}: summarise my context."})
        requests.append(ScheduledRequest(at, u, messages, answer_len))
    return requests
