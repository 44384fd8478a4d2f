"""Performance profiles of simulated vLLM pods: one model on one GPU. Derivations are in docs/simulator.md."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType


@dataclass(frozen=True)
class SimProfile:
    """Constants of one model+GPU pair. Times are simulated seconds."""

    name: str
    model: str
    gpu: str
    block_size: int
    num_gpu_blocks: int
    max_num_seqs: int
    max_num_batched_tokens: int
    max_model_len: int
    gpu_memory_utilization: float
    kv_bytes_per_token: int
    step_base_s: float  # one forward pass at batch 1: reading the weights once plus launch overhead
    decode_per_seq_s: float  # extra time per decoding sequence in the batch (sampling, per-seq compute)
    prefill_tokens_per_s: float  # effective prefill throughput on top of the base step
    mem_bandwidth_bytes_per_s: float  # attention reads every decoding sequence's KV once per step
    lora_load_s: float  # activating an adapter that is not loaded on the GPU
    chat_answer_tokens: tuple[int, int]  # natural answer length range when a chat request gives no max_tokens
    bos_token_id: int | None = None  # prepended to text prompts, as a Llama tokenizer does (Qwen adds none)
    vocab_size: int | None = None  # token ids at or above it are refused; None: the simulated tokenizer's

    @property
    def kv_cache_tokens(self) -> int:
        """Tokens the KV cache holds."""
        return self.num_gpu_blocks * self.block_size


_QWEN25_7B_KV = 2 * 28 * 4 * 128 * 2  # K and V x 28 layers x 4 KV heads x head_dim 128 x 2 bytes = 57,344 B
_LLAMA3_8B_KV = 2 * 32 * 8 * 128 * 2  # 131,072 B

PROFILES: Mapping[str, SimProfile] = MappingProxyType(
    {
        p.name: p
        for p in (
            SimProfile(
                name="qwen2.5-7b-a10",
                model="Qwen/Qwen2.5-7B-Instruct",
                gpu="NVIDIA A10 24GB",
                block_size=16,
                num_gpu_blocks=5_300,  # ~4.9 GB of KV / 57,344 B per token / 16
                max_num_seqs=256,  # vLLM's `vllm serve` default on GPUs under 70 GiB
                max_num_batched_tokens=2_048,  # likewise: `vllm serve`'s chunked-prefill budget on an A10
                max_model_len=32_768,
                gpu_memory_utilization=0.9,
                kv_bytes_per_token=_QWEN25_7B_KV,
                step_base_s=0.028,  # 15.2 GB of weights / 600 GB/s = 25 ms, plus overhead
                decode_per_seq_s=0.00015,
                prefill_tokens_per_s=4_000.0,  # 15.2 GFLOP/token; ~50% of 125 TFLOPS
                mem_bandwidth_bytes_per_s=600e9,
                lora_load_s=0.030,
                chat_answer_tokens=(64, 320),
            ),
            SimProfile(
                name="qwen2.5-7b-h100",
                model="Qwen/Qwen2.5-7B-Instruct",
                gpu="NVIDIA H100 SXM 80GB",
                block_size=16,
                num_gpu_blocks=58_600,  # ~53.8 GB of KV / 57,344 B per token / 16
                max_num_seqs=1_024,  # vLLM's `vllm serve` defaults on GPUs of 70 GiB or more (not A100)
                max_num_batched_tokens=8_192,
                max_model_len=32_768,
                gpu_memory_utilization=0.9,
                kv_bytes_per_token=_QWEN25_7B_KV,
                step_base_s=0.0065,  # 15.2 GB / 3.35 TB/s = 4.5 ms, plus overhead
                decode_per_seq_s=0.00004,
                prefill_tokens_per_s=22_000.0,  # ~35% of 990 TFLOPS dense
                mem_bandwidth_bytes_per_s=3.35e12,
                lora_load_s=0.015,
                chat_answer_tokens=(64, 320),
            ),
            SimProfile(
                name="llama3-8b-h100",
                model="meta-llama/Meta-Llama-3-8B-Instruct",
                gpu="NVIDIA H100 SXM 80GB",
                block_size=16,
                num_gpu_blocks=25_300,  # ~53 GB of KV / 131,072 B per token / 16
                max_num_seqs=1_024,  # vLLM's `vllm serve` defaults on GPUs of 70 GiB or more (not A100)
                max_num_batched_tokens=8_192,
                max_model_len=8_192,
                gpu_memory_utilization=0.9,
                kv_bytes_per_token=_LLAMA3_8B_KV,
                step_base_s=0.007,  # 16.1 GB / 3.35 TB/s = 4.8 ms, plus overhead
                decode_per_seq_s=0.00004,
                prefill_tokens_per_s=20_000.0,
                mem_bandwidth_bytes_per_s=3.35e12,
                lora_load_s=0.015,
                chat_answer_tokens=(64, 320),
            ),
            SimProfile(
                name="tiny",
                model="sim/tiny",
                gpu="none (tests)",
                block_size=16,
                num_gpu_blocks=64,  # 1,024 tokens: a handful of prompts fills it
                max_num_seqs=4,
                max_num_batched_tokens=256,
                max_model_len=1_024,
                gpu_memory_utilization=0.9,
                kv_bytes_per_token=_QWEN25_7B_KV,
                step_base_s=0.002,
                decode_per_seq_s=0.0002,
                prefill_tokens_per_s=20_000.0,
                mem_bandwidth_bytes_per_s=600e9,
                lora_load_s=0.010,
                chat_answer_tokens=(8, 24),
            ),
            SimProfile(
                name="cpu-tiny",
                model="tiny-llama",
                gpu="none (vLLM 0.32 CPU build, tiny random Llama, float32)",
                block_size=128,  # the CPU build's default (GPU builds use 16)
                num_gpu_blocks=4_096,  # VLLM_CPU_KVCACHE_SPACE=1 GiB / 2,048 B per token / 128
                max_num_seqs=256,
                max_num_batched_tokens=4_096,
                max_model_len=512,
                gpu_memory_utilization=0.92,
                kv_bytes_per_token=2_048,
                step_base_s=0.0016,  # measured: 1.76 ms mean inter-token latency at batch 1
                decode_per_seq_s=0.0001,
                prefill_tokens_per_s=10_000.0,  # measured: ~12 ms TTFT for ~100-token prompts
                mem_bandwidth_bytes_per_s=20e9,
                lora_load_s=0.010,
                chat_answer_tokens=(8, 24),
                # scripts/vllm_tiny_model.py: a 1,024-token BPE vocabulary and no BOS post-processor.
                vocab_size=1_024,
            ),
        )
    }
)


def with_overrides(
    profile: SimProfile, *, block_size: int | None = None, max_model_len: int | None = None
) -> SimProfile:
    """`profile` with vLLM's --block-size / --max-model-len applied; the KV cache keeps its size in tokens."""
    if block_size is not None:
        if block_size < 1:
            raise ValueError(f"block_size must be positive, got {block_size}")
        blocks = max(1, profile.kv_cache_tokens // block_size)
        profile = replace(profile, block_size=block_size, num_gpu_blocks=blocks)
    if max_model_len is not None:
        if max_model_len < 2:
            raise ValueError(f"max_model_len must be at least 2, got {max_model_len}")
        profile = replace(profile, max_model_len=max_model_len)
    return profile


def get_profile(name: str) -> SimProfile:
    """The profile called `name`; ValueError listing the known ones otherwise."""
    try:
        return PROFILES[name]
    except KeyError:
        known = ", ".join(sorted(PROFILES))
        raise ValueError(f"unknown simulator profile {name!r}; known: {known}") from None
