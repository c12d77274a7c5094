"""PinSage's layer-wise embedding (the paper's MapReduce inference, on one machine): pure model computation
over arrays, used by the daily inference job (``components.inference.pinsage``) and by the evaluation
harness's validation and test embeddings (``components.evaluation.pinsage``), which sits below inference.

Layer k of every pin is computed once from layer k-1 of every pin, chunk by chunk, so the cost is K passes
over the pins -- linear in the number of pins -- instead of a K-hop computation graph per target
(:func:`per_node_embeddings`, kept as the reference the tests compare to).

Memory: each chunk gathers the previous-layer rows it reads (its pins and their neighbours) into a small array
and computes on that, so a layer's (P, H) representations need not be in memory. With ``buffer_dir`` every layer
is written to a file there chunk by chunk and read back through a read-only shared mapping whose pages are
released after every chunk (:class:`MappedRows`): the process holds O(chunk) rows of any layer, the page cache
the rest (reclaimable, and counted against a pod's memory limit only while nothing else needs the memory).
Without it the layers are arrays in memory, one (P, H) buffer per layer alive at a time.
"""

from __future__ import annotations

import contextlib
import mmap
from pathlib import Path

import numpy as np
import torch

from components.graph.sampling import computation_graph
from components.models.pinsage import PinSage
from components.progress import progress


def needed_rows(nbr_ids: np.ndarray, targets: np.ndarray, num_layers: int) -> list[np.ndarray]:
    """Pin indices whose layer-k representation the targets' embeddings depend on, k = 0..K (ascending).

    rows[K] = targets, rows[k-1] = rows[k] plus their neighbourhoods (Algorithm 1's S^(k), over the whole
    batch). With every pin as a target each entry is every pin.
    """
    rows = [np.unique(np.asarray(targets, np.int64))]
    for _ in range(num_layers):
        rows.insert(0, np.unique(np.concatenate([rows[0], nbr_ids[rows[0]].ravel()])))
    return rows


class MappedRows:
    """An (n, width) float32 array in a file, mapped read-only and shared: :attr:`array` reads it, :meth:`release`
    drops the pages read so far from this process (they stay in the page cache; the next read maps them again),
    so what a chunked pass over the file holds is what one chunk touched."""

    def __init__(self, path: str | Path, n: int, width: int):
        self._file = open(path, "rb")  # noqa: SIM115 - closed by close(), after the mapping
        self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ) if n * width else None
        self.array = (np.frombuffer(self._map, np.float32).reshape(n, width) if self._map is not None
                      else np.zeros((n, width), np.float32))

    @classmethod
    def write(cls, path: str | Path, array: np.ndarray, block: int = 65_536) -> MappedRows:
        """``array`` (n, width) written to ``path`` in blocks of rows, then mapped (the caller drops its copy)."""
        with open(path, "wb") as f:
            for s in range(0, len(array), block):
                f.write(np.ascontiguousarray(array[s:s + block], np.float32).tobytes())
        return cls(path, array.shape[0], array.shape[1])

    def release(self) -> None:
        if self._map is not None:
            self._map.madvise(mmap.MADV_DONTNEED)

    def close(self) -> None:
        self.array = None
        if self._map is not None:
            try:
                self._map.close()
            except BufferError:  # a caller still holds a view: the mapping goes with the last view
                pass
        self._file.close()


class _Layer:
    """The output of one layer, filled chunk by chunk in row order: an array, or a file under ``buffer_dir``."""

    def __init__(self, n: int, width: int, path: Path | None):
        self.n, self.width, self.path = n, width, path
        self._file = open(path, "wb") if path is not None else None  # noqa: SIM115 - closed by finish()
        self._array = np.empty((n, width), np.float32) if path is None else None
        self._filled = 0

    def append(self, rows: np.ndarray) -> None:
        if self._file is not None:
            self._file.write(np.ascontiguousarray(rows, np.float32).tobytes())
        else:
            self._array[self._filled:self._filled + len(rows)] = rows
        self._filled += len(rows)

    def finish(self, stack: contextlib.ExitStack) -> tuple[np.ndarray, MappedRows | None]:
        """(the layer's array, its mapping or None); the mapping is closed by ``stack``."""
        if self._file is None:
            return self._array, None
        self._file.close()
        mapped = MappedRows(self.path, self.n, self.width)
        stack.callback(mapped.close)
        return mapped.array, mapped


@torch.no_grad()
def layerwise_embeddings(model: PinSage, features: np.ndarray, nbr_ids: np.ndarray, nbr_weights: np.ndarray,
                         chunk: int = 4096, targets: np.ndarray | None = None,
                         buffer_dir: str | Path | None = None, features_map: MappedRows | None = None) -> np.ndarray:
    """Embeddings of every pin (or of ``targets``): h^(k) = CONVOLVE_k(h^(k-1)) for the pins that need it.

    features (P, F), nbr_ids/nbr_weights (P, T) in pin-index order; targets: pin indices (a shard of the
    daily run), default all. Layer k is computed once for the rows the targets need (:func:`needed_rows`),
    ``chunk`` rows at a time, each chunk on a gathered copy of the rows it reads. ``buffer_dir``: an existing
    folder for the layer files (removed by the caller), None = layers in memory; ``features_map``: the mapping
    ``features`` comes from, released after every chunk like the layers'. The result does not depend on
    ``buffer_dir``. Returns: (len(unique targets), D) float32 in ascending pin-index order.
    """
    model.eval()
    P = features.shape[0]
    targets = np.arange(P) if targets is None else targets
    nbr_ids = np.asarray(nbr_ids, np.int64)
    rows = needed_rows(nbr_ids, targets, model.num_layers)
    L = model.num_layers
    with contextlib.ExitStack() as stack:
        h, h_rows, h_map = features, None, features_map  # layer 0: every pin, in pin-index order
        for k in range(L):
            idx = rows[k + 1]
            path = None if buffer_dir is None else Path(buffer_dir) / f"layer{k + 1}.f32"
            layer = _Layer(len(idx), model.layers[k].W.out_features, path)
            spans = [idx[s:s + chunk] for s in range(0, len(idx), chunk)]
            for i in progress(spans, desc=f"PinSage layer {k + 1}/{L}", unit="chunk"):
                nb = nbr_ids[i]  # (B, T)
                need = np.unique(np.concatenate([i, nb.ravel()]))  # the rows this chunk reads, ascending
                local = h[need if h_rows is None else np.searchsorted(h_rows, need)]  # (m, .) a copy
                out = model.convolve(k, torch.from_numpy(np.ascontiguousarray(local, np.float32)),
                                     torch.from_numpy(np.searchsorted(need, i)),
                                     torch.from_numpy(np.searchsorted(need, nb)),
                                     torch.from_numpy(np.asarray(nbr_weights[i], np.float32)))  # (B, H)
                layer.append(out.numpy())
                if h_map is not None:
                    h_map.release()
            h, h_map = layer.finish(stack)
            h_rows = idx
        idx = rows[L]
        pos = idx if h_rows is None else np.searchsorted(h_rows, idx)
        out = np.empty((len(idx), model.head.out_dim), np.float32)  # (n, D)
        for s in range(0, len(idx), chunk):
            block = np.ascontiguousarray(h[pos[s:s + chunk]], np.float32)
            out[s:s + len(block)] = model.embed(torch.from_numpy(block)).numpy()
            if h_map is not None:
                h_map.release()
        h = None  # the last layer's view, before its mapping is closed
    return out


@torch.no_grad()
def per_node_embeddings(model: PinSage, features: np.ndarray, nbr_ids: np.ndarray, nbr_weights: np.ndarray,
                        targets: np.ndarray) -> np.ndarray:
    """The reference: each target's own K-hop computation graph (Algorithm 1 with a batch of one).

    Returns: (len(targets), D) float32.
    """
    model.eval()
    out = []
    for t in np.asarray(targets, np.int64):
        nodes, blocks, pos = computation_graph(np.array([t]), nbr_ids, nbr_weights, model.num_layers)
        tb = [{"self_idx": torch.from_numpy(b.self_idx), "nbr_idx": torch.from_numpy(b.nbr_idx),
               "nbr_w": torch.from_numpy(b.nbr_w)} for b in blocks]
        out.append(model(torch.from_numpy(features[nodes]), tb)[pos])  # (1, D)
    return torch.cat(out).numpy() if out else np.zeros((0, model.head.out_dim), np.float32)
