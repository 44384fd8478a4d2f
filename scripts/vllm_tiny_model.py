"""Builds a tiny random Llama, its tokenizer and a LoRA adapter for the real-vLLM tier; no hub download.

Run with the vLLM venv's python (it has torch, transformers and tokenizers):
``python scripts/vllm_tiny_model.py OUT``.
Writes OUT/base (the model) and OUT/lora (the adapter); an existing complete build is kept.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

VOCAB = 1024
# head_dim 64: vLLM's CPU attention kernels support only a few head sizes (32, 64, 80, 96, 112, 128, 256).
HIDDEN, HEADS, LAYERS, INTERMEDIATE = 128, 2, 2, 256
LORA_RANK = 8
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}"
)
SPECIAL = ["<unk>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>"]


def _corpus() -> list[str]:
    """A bundled text to train the tokenizer on: words of this module plus spelled-out numbers and letters."""
    words = Path(__file__).read_text().split()
    return [*words, *(str(i) for i in range(1000)), *"abcdefghijklmnopqrstuvwxyz", *SPECIAL]


def build_tokenizer(out: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB, special_tokens=SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="</s>"
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out)


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
    build_tokenizer(base)
    build_model(base)
    build_lora(lora, base)
    done.touch()
    print(f"tiny model written to {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
