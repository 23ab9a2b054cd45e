"""Search backends (provisional minimal version: exact torch search and embedding-file readers)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch

from hardneg import storage
from hardneg.config import IndexConfig


def exact_search(queries, corpus, k, chunk_size=65536, device="cpu", dtype="float32"):
    q = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))
    best_s = torch.full((len(q), 0), float("-inf"))
    best_r = torch.zeros((len(q), 0), dtype=torch.int64)
    for start in range(0, len(corpus), chunk_size):
        c = torch.from_numpy(np.ascontiguousarray(corpus[start:start + chunk_size], dtype=np.float32))
        s = q @ c.T
        kk = min(k, s.shape[1])
        ts, tr = torch.topk(s, kk, dim=1)
        best_s = torch.cat([best_s, ts], 1)
        best_r = torch.cat([best_r, tr + start], 1)
        order = np.lexsort((best_r.numpy(), -best_s.numpy()), axis=1)[:, :k]
        best_s = torch.from_numpy(np.take_along_axis(best_s.numpy(), order, 1))
        best_r = torch.from_numpy(np.take_along_axis(best_r.numpy(), order, 1))
    scores, rows = best_s.numpy().astype(np.float32), best_r.numpy().astype(np.int64)
    if rows.shape[1] < k:
        pad = k - rows.shape[1]
        scores = np.concatenate([scores, np.full((len(q), pad), -np.inf, np.float32)], 1)
        rows = np.concatenate([rows, np.full((len(q), pad), -1, np.int64)], 1)
    return scores, rows


class ExactIndex:
    def __init__(self, corpus, cfg):
        self.corpus, self.cfg, self.ntotal = corpus, cfg, len(corpus)

    def search(self, queries, k):
        return exact_search(queries, self.corpus, k, self.cfg.chunk_size)


def embedding_files(embeddings_dir):
    loc = storage.resolve(embeddings_dir)
    if not storage.is_committed(loc):
        raise storage.StorageError(f"{loc.url} is not committed")
    import pyarrow.parquet as pq
    out = []
    for f in sorted(storage.list_table_files(embeddings_dir), key=lambda l: l.path):
        with f.fs.open(f.path, "rb") as h:
            out.append((f.url, pq.ParquetFile(h).metadata.num_rows))
    return out


def read_embeddings(embeddings_dir, files=None):
    files = files if files is not None else embedding_files(embeddings_dir)
    ids, vecs = [], []
    for url, _ in files:
        t = storage.read_table_file(storage.resolve(url), ["id", "embedding"])
        ids.append(t.column("id").cast(pa.string()).to_numpy(zero_copy_only=False))
        emb = t.column("embedding").combine_chunks()
        vecs.append(emb.values.to_numpy(zero_copy_only=False).reshape(len(emb), -1).astype(np.float32))
    return np.concatenate(ids), np.concatenate(vecs)


def open_index(embeddings_dir, cfg: IndexConfig):
    _, vecs = read_embeddings(embeddings_dir)
    return ExactIndex(vecs, cfg)


def recall_at_k(approx_rows, exact_rows):
    hits = [len(set(a) & set(e[e >= 0])) / max(1, (e >= 0).sum()) for a, e in zip(approx_rows, exact_rows)]
    return float(np.mean(hits))
