"""The semantic tier's embedder: ONNX graphs built from the bundled weights agree with the numpy oracle."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from epp.cache.semantic.bert import model_dir, weights_digest
from epp.cache.semantic.embedder import Embedder, load_embedder
from epp.cache.semantic.onnx_build import build_model_files, ensure_model_files, model_files

SENTENCES = [
    "How do I reset my password?",
    "What is the capital of France?",
    "A man is eating food.",
    "I don't want to cancel my subscription.",
    "Book a flight from Berlin to Rome on 3 May 2024 for 2 adults.",
    "Explain quantum entanglement in simple terms, with an example about two coins.",
]
# (paraphrase a, paraphrase b, unrelated)
TRIPLES = [
    ("How do I reset my password?", "What is the way to change my password?", "The weather is sunny today."),
    ("A man is eating food.", "A man is eating a piece of bread.", "The girl plays the violin on stage."),
    (
        "What's the capital of France?",
        "Which city is the capital of France?",
        "How do I bake sourdough bread?",
    ),
]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("models")
    ensure_model_files(folder)
    return folder


@pytest.fixture(scope="module")
def oracle() -> Embedder:
    return load_embedder("minilm-numpy")


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.asarray(np.sum(a * b, axis=1))  # rows are unit vectors


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "floor"), [("minilm-fp32", 0.9999), ("minilm-int8", 0.98)])
def test_onnx_matches_numpy_reference(models: Path, oracle: Embedder, kind: str, floor: float) -> None:
    embedder = load_embedder(kind, models)
    reference = oracle.embed(SENTENCES)
    assert _cosines(embedder.embed(SENTENCES), reference).min() >= floor
    singles = np.stack([embedder.embed([text])[0] for text in SENTENCES])
    assert _cosines(singles, reference).min() >= floor


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["minilm-numpy", "minilm-fp32", "minilm-int8"])
def test_shape_dtype_and_unit_rows(models: Path, kind: str) -> None:
    embedder = load_embedder(kind, models)
    vectors = embedder.embed(SENTENCES)
    assert embedder.dim == 384
    assert vectors.shape == (len(SENTENCES), 384)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert embedder.embed([]).shape == (0, 384)
    assert embedder.name.startswith("all-MiniLM-L6-v2/")


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["minilm-numpy", "minilm-int8"])
def test_paraphrases_score_higher_than_unrelated(models: Path, kind: str) -> None:
    embedder = load_embedder(kind, models)
    for a, b, unrelated in TRIPLES:
        va, vb, vu = embedder.embed([a, b, unrelated])
        assert float(va @ vb) > float(va @ vu) + 0.3


def test_reference_reproduces_the_published_similarity(oracle: Embedder) -> None:
    # sentence-transformers' own example for all-MiniLM-L6-v2 gives 0.7553 for this pair
    a, b = oracle.embed(["A man is eating food.", "A man is eating a piece of bread."])
    assert float(a @ b) == pytest.approx(0.7553, abs=2e-3)


def test_long_text_is_truncated_not_rejected(oracle: Embedder) -> None:
    long_text = "word " * 2000
    vector = oracle.embed([long_text, "short"])
    assert vector.shape == (2, 384)
    assert np.isfinite(vector).all()
    # the embedding sees the first 256 tokens only: what follows does not count
    np.testing.assert_allclose(oracle.embed([long_text + " but not this"])[0], vector[0], atol=1e-6)


def test_fits_tells_whether_a_text_is_embedded_whole(oracle: Embedder) -> None:
    assert oracle.fits("short")
    assert oracle.fits("word " * 254)  # 254 tokens + [CLS] + [SEP]
    assert not oracle.fits("word " * 255)
    assert not oracle.fits("word " * 2000)


@pytest.mark.slow
def test_model_files_are_cached_and_rebuilt_when_missing(models: Path) -> None:
    files = model_files(models, weights_digest(model_dir() / "model.safetensors"))
    assert all(path.exists() for path in files.values())
    stamps = {p: path.stat().st_mtime_ns for p, path in files.items()}
    assert build_model_files(models) == files
    assert {p: path.stat().st_mtime_ns for p, path in files.items()} == stamps  # nothing rebuilt
    files["int8"].unlink()
    assert ensure_model_files(models) == files["int8"]
    assert files["int8"].exists()
    assert files["fp32"].stat().st_mtime_ns == stamps["fp32"]
    assert not list(models.glob("*.tmp"))  # atomic writes leave no temp files behind


def test_file_names_follow_the_weights_digest(tmp_path: Path) -> None:
    a, b = model_files(tmp_path, "a" * 64), model_files(tmp_path, "b" * 64)
    assert a["int8"] != b["int8"]
    assert a["fp32"] != b["fp32"]


def test_unknown_kind_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown embedder"):
        load_embedder("word2vec", tmp_path)


def test_env_var_chooses_the_default_cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from epp.cache.semantic.onnx_build import default_cache_dir

    monkeypatch.setenv("EPP_MODEL_DIR", str(tmp_path))
    assert default_cache_dir() == tmp_path
    monkeypatch.delenv("EPP_MODEL_DIR")
    assert default_cache_dir() == Path.home() / ".cache" / "epp" / "models"
