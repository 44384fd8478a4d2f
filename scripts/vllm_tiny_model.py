"""Builds a tiny random Llama, its tokenizer and a LoRA adapter for the real-vLLM tier; no hub download.

Run with the vLLM venv's python (it has torch and transformers):
``python scripts/vllm_tiny_model.py OUT``.
Writes OUT/base (the model) and OUT/lora (the adapter); an existing complete build is kept.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

VOCAB = 1024
# head_dim 64: vLLM's CPU attention kernels support only a few head sizes (32, 64, 80, 96, 112, 128, 256).
HIDDEN, HEADS, LAYERS, INTERMEDIATE = 128, 2, 2, 256
LORA_RANK = 8
TOKENIZER = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "vllm" / "tiny-llama-tokenizer"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


def copy_tokenizer(out: Path) -> None:
    """Installs the committed tokenizer: the main suite's hf-local tests use the vocabulary vLLM serves.

    (It was trained once from a small corpus; training it at build time made the vocabulary depend on the
    tokenizers version and on this file's text.)
    """
    out.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        shutil.copy(TOKENIZER / name, out / name)


def build_model(out: Path) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=HEADS,
        max_position_embeddings=4096,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
        torch_dtype="float32",
    )
    LlamaForCausalLM(config).save_pretrained(out, safe_serialization=True)


def build_lora(out: Path, base: Path) -> None:
    """A PEFT-format adapter on q_proj/v_proj, written directly (peft is not in the venv)."""
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(1)
    tensors: dict[str, torch.Tensor] = {}
    for layer in range(LAYERS):
        for proj in ("q_proj", "v_proj"):
            key = f"base_model.model.model.layers.{layer}.self_attn.{proj}"
            tensors[f"{key}.lora_A.weight"] = torch.randn(LORA_RANK, HIDDEN) * 0.01
            tensors[f"{key}.lora_B.weight"] = torch.randn(HIDDEN, LORA_RANK) * 0.01
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "adapter_model.safetensors"))
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": str(base),
        "r": LORA_RANK,
        "lora_alpha": 16,
        "lora_dropout": 0.0,
        "target_modules": ["q_proj", "v_proj"],
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
    }
    (out / "adapter_config.json").write_text(json.dumps(config, indent=2))


def main(out: Path) -> None:
    base, lora, done = out / "base", out / "lora", out / ".complete"
    if done.exists():
        return
    copy_tokenizer(base)
    build_model(base)
    build_lora(lora, base)
    done.touch()
    print(f"tiny model written to {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
