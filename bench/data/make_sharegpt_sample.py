"""Write bench/data/sharegpt_sample.json: a small, deterministic, generated ShareGPT-format data set.

Run `python -m bench.data.make_sharegpt_sample`; the same seed always writes the same bytes.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import orjson

OUTPUT = Path(__file__).resolve().parent / "sharegpt_sample.json"

_TOPICS = (
    "sourdough bread",
    "a home network",
    "the French revolution",
    "binary search trees",
    "tomato plants",
    "marathon training",
    "solar panels",
    "a job interview",
    "Python decorators",
    "the water cycle",
    "a budget spreadsheet",
    "chess openings",
    "watercolor painting",
    "a road trip in Norway",
    "unit testing",
    "black holes",
    "a vegetarian lasagna",
    "learning Spanish",
    "SQL joins",
    "beekeeping",
)
_QUESTION_TEMPLATES = (
    "Can you explain {topic} to a beginner?",
    "What are the most common mistakes people make with {topic}?",
    "Give me a step-by-step plan to get started with {topic}.",
    "How would you compare {topic} with {other}?",
    "Summarize what we discussed about {topic} in a few bullet points.",
    "What is one surprising fact about {topic}?",
    "Write a short story that involves {topic} and {other}.",
    "What should I read next if I liked learning about {topic}?",
)
_ANSWER_SENTENCES = (
    "Start with the basics and build up slowly.",
    "The key idea is to break the problem into small, testable parts.",
    "Most people underestimate how much practice this takes.",
    "A useful rule of thumb is to measure before you change anything.",
    "Here is an example that shows the difference clearly.",
    "Keep notes as you go, because details are easy to forget.",
    "There are trade-offs, and the right choice depends on your goals.",
    "Finally, review what worked and adjust the plan.",
)


def make_sample(num_conversations: int, seed: int) -> list[dict[str, object]]:
    """Conversations of 3 to 8 human/gpt exchanges with templated questions and answers."""
    rng = random.Random(seed)
    data: list[dict[str, object]] = []
    for index in range(num_conversations):
        topic, other = rng.sample(_TOPICS, 2)
        turns: list[dict[str, str]] = []
        for _ in range(rng.randint(3, 8)):
            question = rng.choice(_QUESTION_TEMPLATES).format(topic=topic, other=other)
            answer = " ".join(rng.choice(_ANSWER_SENTENCES) for _ in range(rng.randint(3, 12)))
            turns.append({"from": "human", "value": question})
            turns.append({"from": "gpt", "value": answer})
        data.append({"id": f"sample-{index}", "conversations": turns})
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--num-conversations", type=int, default=40)
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args()
    sample = make_sample(args.num_conversations, args.seed)
    args.output.write_bytes(orjson.dumps(sample, option=orjson.OPT_INDENT_2) + b"\n")
    print(f"wrote {len(sample)} conversations to {args.output}")


if __name__ == "__main__":
    main()
