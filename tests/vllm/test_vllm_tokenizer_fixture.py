"""The tokenizer copied into tests/fixtures is the one the real-vLLM tier's model is built with.

The main suite's hf-local tests use the copy (so they run without build/vllm); this tier, which builds the
model, checks that the copy still tokenizes like the built model.
"""

from __future__ import annotations

import pytest

from epp.tokenization.hf_local import HFLocalTokenizer
from tests.test_tokenization import CHAT, COMPLETION, TINY_LLAMA
from tests.vllm.pods import BUILD

pytestmark = [pytest.mark.vllm]


def test_the_fixture_is_the_real_tier_models_tokenizer() -> None:
    built, copied = HFLocalTokenizer(BUILD / "model" / "base"), HFLocalTokenizer(TINY_LLAMA)
    for body in (CHAT, COMPLETION):
        assert built.tokenize(body) == copied.tokenize(body)
