"""Per-partition vector indexes: brute force and HNSW agree, expiry, caps, isolation."""

from __future__ import annotations

import numpy as np
import pytest

from epp.cache.semantic.index import PartitionIndex, PartitionIndexes, build_graph

DIM = 32


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.standard_normal((n, DIM)).astype(np.float32)
    return np.asarray(x / np.linalg.norm(x, axis=1, keepdims=True))


def near(vec: np.ndarray, rng: np.random.Generator, cosine: float = 0.95) -> np.ndarray:
    z = rng.standard_normal(DIM).astype(np.float32)
    z -= (z @ vec) * vec
    z /= np.linalg.norm(z)
    return np.asarray(cosine * vec + np.sqrt(1 - cosine**2) * z, dtype=np.float32)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("hnsw_from", [10_000, 8])  # brute force only; HNSW after 8 entries
def test_search_finds_the_nearest_in_order(hnsw_from: int) -> None:
    rng = np.random.default_rng(1)
    vecs = unit(rng, 200)
    index = PartitionIndex(DIM, hnsw_from=hnsw_from)
    for i, v in enumerate(vecs):
        index.add(f"e{i}", v)
    assert index.is_hnsw == (hnsw_from < 200)
    for i in (0, 57, 199):
        found = index.search(near(vecs[i], rng), 3, now=0)
        assert found[0][0] == f"e{i}"
        assert found[0][1] == pytest.approx(0.95, abs=1e-3)
        assert [s for _, s in found] == sorted((s for _, s in found), reverse=True)
    exact = index.search(vecs[3], 1, now=0)
    assert exact[0][0] == "e3"
    assert exact[0][1] == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("hnsw_from", [10_000, 8])
def test_remove_and_replace(hnsw_from: int) -> None:
    rng = np.random.default_rng(2)
    vecs = unit(rng, 40)
    index = PartitionIndex(DIM, hnsw_from=hnsw_from)
    for i, v in enumerate(vecs):
        index.add(f"e{i}", v)
    for i in (0, 39, 17):  # first, last, middle
        assert index.remove(f"e{i}")
        assert not index.remove(f"e{i}")
        assert f"e{i}" not in index
        assert all(e != f"e{i}" for e, _ in index.search(vecs[i], 5, now=0))
    assert len(index) == 37
    for i in (5, 30):  # every other entry is still found by its own vector
        assert index.search(vecs[i], 1, now=0)[0][0] == f"e{i}"
    index.add("e5", vecs[6])  # same id, new vector: replaced, not duplicated
    assert len(index) == 37
    assert {e for e, _ in index.search(vecs[6], 2, now=0)} == {"e5", "e6"}
    for i in range(100):  # reuses the freed HNSW labels, then grows past the initial capacity
        index.add(f"n{i}", unit(rng, 1)[0])
    assert len(index) == 137
    assert index.search(vecs[30], 1, now=0)[0][0] == "e30"


def test_k_larger_than_the_partition() -> None:
    rng = np.random.default_rng(3)
    index = PartitionIndex(DIM)
    for i, v in enumerate(unit(rng, 3)):
        index.add(f"e{i}", v)
    assert len(index.search(unit(rng, 1)[0], 10, now=0)) == 3
    assert index.search(unit(rng, 1)[0], 0, now=0) == []
    assert PartitionIndex(DIM).search(unit(rng, 1)[0], 5, now=0) == []


@pytest.mark.parametrize("hnsw_from", [10_000, 4])
def test_expired_entries_are_skipped_and_dropped(hnsw_from: int) -> None:
    rng = np.random.default_rng(4)
    clock = Clock()
    indexes = PartitionIndexes[None](DIM, hnsw_from=hnsw_from, clock=clock)
    vecs = unit(rng, 10)
    for i, v in enumerate(vecs):
        indexes.add("p", f"e{i}", v, expires_at=clock.now + (10 if i % 2 else 100))
    indexes.add("p", "forever", vecs[0], expires_at=None)
    clock.now += 50
    found = indexes.search("p", vecs[1], 3)
    assert "e1" not in [e for e, _ in found]
    assert indexes.partition_of("e1") is None  # dropped on sight
    odd = {f"e{i}" for i in (1, 3, 5, 7, 9)}
    assert {d.entry_id for d in indexes.prune()} <= odd - {"e1"}  # what the search did not already drop
    assert all(indexes.partition_of(e) is None for e in odd)
    assert indexes.prune() == []
    assert len(indexes) == 6
    clock.now += 1000
    pruned = indexes.prune()
    assert sorted(d.entry_id for d in pruned) == sorted(f"e{i}" for i in (0, 2, 4, 6, 8))
    assert {d.reason for d in pruned} == {"expired"}
    assert [e for e, _ in indexes.search("p", vecs[0], 3)] == ["forever"]


def test_re_adding_an_entry_renews_its_expiry() -> None:
    rng = np.random.default_rng(5)
    clock = Clock()
    indexes = PartitionIndexes[None](DIM, clock=clock)
    v = unit(rng, 1)[0]
    indexes.add("p", "e", v, expires_at=clock.now + 10)
    indexes.add("p", "e", v, expires_at=clock.now + 100)
    clock.now += 50
    assert indexes.prune() == []
    assert indexes.search("p", v, 1)[0][0] == "e"


def test_partitions_are_isolated() -> None:
    rng = np.random.default_rng(6)
    indexes = PartitionIndexes[None](DIM)
    v = unit(rng, 1)[0]
    indexes.add("tenant-a", "a", v)
    assert indexes.search("tenant-b", v, 5) == []
    assert indexes.search("tenant-a", v, 5)[0][0] == "a"
    assert indexes.remove("a")
    assert indexes.partitions == 0  # an emptied partition is forgotten


def test_per_partition_cap_evicts_that_partitions_oldest() -> None:
    rng = np.random.default_rng(7)
    indexes: PartitionIndexes[int] = PartitionIndexes(DIM, max_per_partition=3)
    indexes.add("q", "other", unit(rng, 1)[0])
    evicted = [indexes.add("p", f"e{i}", v, payload=i) for i, v in enumerate(unit(rng, 5))]
    assert evicted == [[], [], [], [("e0", 0, "evicted")], [("e1", 1, "evicted")]]
    assert indexes.payload("e4") == 4
    assert indexes.payload("e0") is None
    assert len(indexes.get("p") or []) == 3
    assert indexes.partition_of("other") == "q"


def test_global_cap_evicts_the_oldest_anywhere() -> None:
    rng = np.random.default_rng(8)
    indexes = PartitionIndexes[None](DIM, max_entries=4)
    for i, v in enumerate(unit(rng, 4)):
        assert indexes.add(f"p{i % 2}", f"e{i}", v) == []
    assert [d.entry_id for d in indexes.add("p9", "new", unit(rng, 1)[0])] == ["e0"]
    assert [d.entry_id for d in indexes.add("p9", "newer", unit(rng, 1)[0])] == ["e1"]
    assert len(indexes) == 4
    assert indexes.partition_of("e0") is None


def test_bulk_add_matches_single_adds() -> None:
    rng = np.random.default_rng(9)
    vecs = unit(rng, 50)
    ids = [f"e{i}" for i in range(50)]
    bulk = PartitionIndexes[None](DIM, hnsw_from=20)
    bulk.add_many("p", ids, vecs, [None] * 50)
    assert bulk.get("p") is not None and bulk.get("p").is_hnsw  # type: ignore[union-attr]
    for i in (0, 25, 49):
        assert bulk.search("p", vecs[i], 1)[0][0] == f"e{i}"


def test_random_operations_agree_with_a_dict() -> None:
    rng = np.random.default_rng(10)
    index = PartitionIndex(DIM)
    model: dict[str, np.ndarray] = {}
    for step in range(600):
        if model and rng.random() < 0.3:
            victim = sorted(model)[int(rng.integers(len(model)))]
            del model[victim]
            assert index.remove(victim)
        else:
            entry_id = f"e{int(rng.integers(300))}"
            model[entry_id] = unit(rng, 1)[0]
            index.add(entry_id, model[entry_id])
        if step % 50 == 0 and model:
            query = unit(rng, 1)[0]
            best = max(model, key=lambda e: float(model[e] @ query))
            assert index.search(query, 1, now=0)[0][0] == best
    assert len(index) == len(model)


def test_a_graph_built_elsewhere_takes_the_changes_made_meanwhile() -> None:
    rng = np.random.default_rng(11)
    vecs = unit(rng, 30)
    index = PartitionIndex(DIM, hnsw_from=10)
    for i in range(12):
        index.add_many([f"e{i}"], vecs[i : i + 1], [None], convert=False)
    assert not index.is_hnsw and index.wants_graph()
    snapshot = index.snapshot()
    assert not index.wants_graph()  # one snapshot out at a time
    index.remove("e0")  # removed meanwhile
    index.add_many(["e1"], vecs[20:21], [None], convert=False)  # replaced meanwhile
    index.add_many(["e12"], vecs[12:13], [None], convert=False)  # added meanwhile
    index.adopt(build_graph(snapshot.rows), snapshot)
    assert index.is_hnsw and len(index) == 12
    assert "e0" not in index and index.search(vecs[0], 1, now=0)[0][0] != "e0"
    assert index.search(vecs[20], 1, now=0)[0][0] == "e1"
    assert index.search(vecs[12], 1, now=0)[0][0] == "e12"
    assert index.search(vecs[5], 1, now=0)[0][0] == "e5"
    assert index.oldest() == "e2"  # age order kept: e0 is gone, e1 was re-added (the newest now)
    index.add("e13", vecs[13])  # the graph takes further adds
    assert index.search(vecs[13], 1, now=0)[0][0] == "e13"


def test_an_obsolete_snapshot_is_ignored() -> None:
    rng = np.random.default_rng(12)
    vecs = unit(rng, 12)
    index = PartitionIndex(DIM, hnsw_from=10)
    index.add_many([f"e{i}" for i in range(10)], vecs[:10], [None] * 10, convert=False)
    snapshot = index.snapshot()
    index.add_many(["e10", "e11"], vecs[10:], [None, None])  # converts inline meanwhile
    assert index.is_hnsw
    index.adopt(build_graph(snapshot.rows), snapshot)  # ignored
    assert len(index) == 12 and index.search(vecs[11], 1, now=0)[0][0] == "e11"
    failed = PartitionIndex(DIM, hnsw_from=2)
    failed.add_many(["a", "b"], vecs[:2], [None, None], convert=False)
    failed.snapshot()
    failed.drop_snapshot()  # the build failed: another may be tried
    assert failed.wants_graph()


def test_reorder_sets_the_global_age_order() -> None:
    rng = np.random.default_rng(13)
    indexes: PartitionIndexes[None] = PartitionIndexes(DIM, max_entries=3)
    indexes.add_many("a", ["a1", "a2"], unit(rng, 2), [None, None])
    indexes.add_many("b", ["b1"], unit(rng, 1), [None])
    indexes.reorder(["a1", "b1", "a2"])
    assert [d.entry_id for d in indexes.add("c", "c1", unit(rng, 1)[0])] == ["a1"]
    assert [d.entry_id for d in indexes.add("c", "c2", unit(rng, 1)[0])] == ["b1"]
