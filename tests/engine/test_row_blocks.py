"""One RowBlock per block: rows, global row offset and per-row inputs, unchanged to the kernel.

The reduction builds the block once from the fit's rows and per-row inputs; shards and
shared passes hand it on as it is. A probe kernel checks that every row meets its own
weight, mask row and global index, whatever the chunking, the shard or the pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import dask.array as da
import numpy as np
import pytest

from emdist.engine.data import align_per_row, prepare_fit_data
from emdist.engine.lockstep import shared_pass
from emdist.engine.reduce import Rows, build_reduction, map_reduce, row_offsets
from emdist.engine.shards import make_shards, shard_pass, shards_pass
from emdist.kernels.rows import RowBlock

N, D = 103, 3
RNG = np.random.default_rng(0)
X = RNG.normal(size=(N, D))
W = RNG.uniform(0.5, 2.0, size=N)
MASK = RNG.uniform(size=(N, D)) < 0.2
CHUNKS = (10, 25, 0, 30, 38)  # uneven, with an empty block


def probe(block: RowBlock, scale: float = 1.0) -> np.ndarray:
    """Weighted sums that pair each row with its weight, mask row and global index."""
    assert block.weights is not None and block.mask is not None
    index = block.row_offset + np.arange(block.n_rows)
    return scale * np.array(
        [
            block.weights.sum(),
            (block.weights * index).sum(),
            (block.weights * block.x[:, 0]).sum(),
            (block.mask.sum(axis=1) * index).sum(),
        ]
    )


def expected(rows: np.ndarray | slice = slice(None)) -> np.ndarray:
    index = np.arange(N)[rows]
    w, m, x = W[rows], MASK[rows], X[rows]
    return np.array(
        [w.sum(), (w * index).sum(), (w * x[:, 0]).sum(), (m.sum(axis=1) * index).sum()]
    )


def _rows(whole: bool = False) -> Rows:
    x = da.from_array(X, chunks=(CHUNKS, D))
    return Rows(
        x,
        {
            # Whole: in memory, each block's rows sliced by its global offset; else chunked
            # otherwise than x, aligned by the pass.
            "weights": W if whole else da.from_array(W, chunks=17),
            "mask": da.from_array(MASK, chunks=(50, 1)),
        },
    )


def test_a_pass_hands_every_block_its_rows_weights_mask_and_offset() -> None:
    np.testing.assert_allclose(map_reduce(_rows(), probe), expected(), rtol=1e-12)
    np.testing.assert_allclose(map_reduce(_rows(whole=True), probe), expected(), rtol=1e-12)
    in_memory = Rows(X, {"weights": W, "mask": MASK})
    np.testing.assert_allclose(map_reduce(in_memory, probe), expected(), rtol=1e-12)


def test_a_shared_pass_hands_every_run_the_same_block() -> None:
    @dataclass(frozen=True)
    class Step:
        scale: float

        def estep_chunk(self, block: RowBlock, params: Any) -> np.ndarray:
            return probe(block, self.scale * params)

    got = shared_pass(_rows(), [(Step(1.0), 1.0), (Step(2.0), 0.5), (Step(3.0), 1.0)])
    for value, factor in zip(got, [1.0, 1.0, 3.0], strict=True):
        np.testing.assert_allclose(value, factor * expected(), rtol=1e-12)


@pytest.mark.parametrize("whole", [False, True])
@pytest.mark.parametrize("n_shards", [1, 3])
def test_shards_hand_every_block_its_global_offset_and_per_row_inputs(
    n_shards: int, whole: bool
) -> None:
    rows = _rows(whole)
    shards = make_shards(rows, n_shards, seed=7)
    starts = row_offsets(rows)
    ends = [*starts[1:], N]
    every = shards_pass(rows, shards, probe)
    for s, idx in enumerate(shards.blocks):
        mine = np.concatenate([np.arange(starts[b], ends[b]) for b in idx])
        np.testing.assert_allclose(every[s], expected(mine), rtol=1e-12)
        np.testing.assert_allclose(shard_pass(rows, shards, s, probe), every[s], rtol=0)
        # The shard's blocks with weights of their own rows alone: cut where each block
        # stands among them, while the blocks keep their global offsets.
        own = Rows(rows.x.blocks[list(idx)], {"weights": W[mine], "mask": MASK[mine]})
        offsets = [starts[b] for b in idx]
        np.testing.assert_allclose(map_reduce(own, probe, offsets=offsets), every[s], rtol=0)
    np.testing.assert_allclose(sum(every), expected(), rtol=1e-12)


def test_fit_data_aligns_per_row_inputs_with_the_row_blocks() -> None:
    x = da.from_array(X, chunks=(CHUNKS, D))
    data = prepare_fit_data(
        x, n_clusters=2, seed=0, sample_size=20, what="n_clusters", per_row={"weights": W}
    )
    # In-memory weights are held whole, in memory (sliced inside each block's task).
    assert isinstance(data.per_row["weights"], np.ndarray)
    got = map_reduce(data.rows, lambda b: np.array([(b.weights * b.x[:, 0]).sum()]))
    np.testing.assert_allclose(got, [(W * X[:, 0]).sum()], rtol=1e-12)
    # Lazy weights of out-of-core data are read block by block, with the data's chunks.
    lazy = align_per_row(x, {"weights": da.from_array(W, chunks=17)}, in_memory=False)
    assert lazy["weights"].chunks[0] == x.chunks[0]


def _tasks(rows: Rows) -> int:
    reduction = build_reduction(rows, probe_weights)
    return len(dict(reduction.__dask_graph__()))


def probe_weights(block: RowBlock) -> np.ndarray:
    w = np.ones(block.n_rows) if block.weights is None else block.weights
    return np.array([w.sum(), (w * block.x[:, 0]).sum(), float(block.row_offset)])


@pytest.mark.parametrize("chunk_rows", [30, 7])
def test_in_memory_weights_add_no_task_per_block(chunk_rows: int) -> None:
    # What sample_weight costs a pass beyond its kernel is graph tasks: in-memory weights
    # of a fit ride in a key the pass has anyway, not in a slice (and reshape) per block.
    x = da.from_array(X, chunks=(chunk_rows, D))
    data = prepare_fit_data(
        x, n_clusters=2, seed=0, sample_size=20, what="n_clusters", per_row={"weights": W}
    )
    assert x.numblocks[0] >= 4
    assert _tasks(data.rows) <= _tasks(Rows(x))
    # Whole or aligned, every block's kernel sees the same weights: the same sums, bit
    # for bit.
    aligned = Rows(x, {"weights": da.from_array(W, chunks=(x.chunks[0],))})
    assert np.array_equal(map_reduce(data.rows, probe_weights), map_reduce(aligned, probe_weights))


def test_a_selection_carries_its_rows_per_row_inputs_and_global_indices() -> None:
    block = RowBlock(X[40:70], 40, W[40:70], MASK[40:70])
    keep = MASK[40:70].any(axis=1)
    part = block.select(keep)
    mine = np.flatnonzero(keep)
    assert np.array_equal(part.x, X[40:70][mine])
    assert part.weights is not None and np.array_equal(part.weights, W[40:70][mine])
    assert part.mask is not None and np.array_equal(part.mask, MASK[40:70][mine])
    assert not part.contiguous and block.contiguous
    assert np.array_equal(part.global_index, 40 + mine)
    assert np.array_equal(block.global_index, np.arange(40, 70))
    # Rows of a selection keep their global indices; a selection by index is the same.
    assert np.array_equal(part.rows(1, 3).global_index, 40 + mine[1:3])
    again = block.select(mine)
    assert np.array_equal(again.x, part.x) and np.array_equal(again.global_index, 40 + mine)
    assert RowBlock(X[40:70], 40, None).select(keep).weights is None
