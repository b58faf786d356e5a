"""Similarity search at survey scale: fmb's `SimilarityIndex` against exact flat search, side by side.

Data (fixed seeds, generated in chunks): N x D float32 rows from a mixture of a few thousand
Gaussian clusters shaped like real embeddings rather than isotropic noise:
* a random orthonormal basis in which the spread falls as a power law (sigma_i ~ i^-1/2: a few
  dozen directions carry most of the variance, as in the PCA spectra of foundation-model embeddings);
* cluster centres drawn from that spectrum, cluster sizes Zipf-like (weight ~ rank^-0.8);
* each cluster with its own spread per axis (log-normal factors): anisotropic, of varied widths,
  neighbouring clusters overlapping;
* a common offset, so cosine similarities are mostly positive as in real embeddings (the script
  prints the median similarity of random pairs and of each query's 10th exact neighbour).
Queries are 1,000 further rows from the same mixture (not in the index).

Measured: build time (fmb: k-means, codes, re-rank store, fingerprint), single-query top-10 latency
p50/p95 (one query at a time through `SimilarityIndex.search`, as the analysis task calls it),
recall@10 against exact `IndexFlatIP` ground truth, the same latency for exact flat search (on a
subset: each scans all N x D floats), save/load, index size and peak memory.

    python benchmarks/similarity.py                       # N = 1,000,000, D = 768
    python benchmarks/similarity.py --n 50000 --dim 64 --exact-max 10000
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from fmb.analyze.similarity import SimilarityIndex
from fmb.config import SimilarityConfig

CHUNK = 50_000
QUERY_STREAM = 10**6  # the queries' random stream, apart from every database chunk's


@dataclass
class Mixture:
    basis: np.ndarray  # (D, D) orthonormal
    centres: np.ndarray  # (clusters, D) in basis coordinates
    widths: np.ndarray  # (clusters, D) per-axis spread in basis coordinates
    weights: np.ndarray  # (clusters,) probabilities
    offset: np.ndarray  # (D,) common to every row

    @classmethod
    def make(cls, dim: int, clusters: int, seed: int, within: float = 0.7) -> Mixture:
        rng = np.random.default_rng(seed)
        spectrum = (1 + np.arange(dim)) ** -0.5
        basis = np.linalg.qr(rng.normal(size=(dim, dim)))[0].astype(np.float32)
        centres = (rng.normal(size=(clusters, dim)) * spectrum).astype(np.float32)
        widths = within * spectrum * rng.lognormal(0, 0.5, (clusters, dim)) * rng.lognormal(0, 0.3, (clusters, 1))
        weights = (1 + np.arange(clusters)) ** -0.8
        offset = (1.5 * rng.normal(size=dim) * spectrum).astype(np.float32) @ basis
        return cls(basis, centres, widths.astype(np.float32), weights / weights.sum(), offset)

    def rows(self, stream: int, n: int, seed: int) -> np.ndarray:
        """`n` unit rows from their own random stream (so any chunking of the database agrees)."""
        rng = np.random.default_rng([seed, stream])
        labels = rng.choice(len(self.centres), n, p=self.weights)
        latent = self.centres[labels] + rng.standard_normal((n, self.basis.shape[0]), dtype=np.float32) * self.widths[labels]
        rows = latent @ self.basis + self.offset
        faiss.normalize_L2(rows)
        return rows


def exact_database(mixture: Mixture, n: int, seed: int) -> faiss.IndexFlatIP:
    """The ground-truth index, filled chunk by chunk (its storage is the only full copy of the data)."""
    flat = faiss.IndexFlatIP(mixture.basis.shape[0])
    for chunk, start in enumerate(range(0, n, CHUNK)):
        flat.add(mixture.rows(chunk, min(CHUNK, n - start), seed))
    return flat


def stored_rows(flat: faiss.IndexFlatIP) -> np.ndarray:
    """A numpy view (no copy) of the rows stored in `flat`."""
    return faiss.rev_swig_ptr(flat.get_xb(), flat.ntotal * flat.d).reshape(flat.ntotal, flat.d)


def single_query_latencies(search, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(seconds per query, found ids) searching one query at a time."""
    seconds, found = [], []
    for query in queries:
        started = time.perf_counter()
        ids, _ = search(query[None], k)
        seconds.append(time.perf_counter() - started)
        found.append(ids[0])
    return np.array(seconds), np.array(found)


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(np.intersect1d(a, b)) / truth.shape[1] for a, b in zip(found, truth)]))


def flat_search(flat: faiss.IndexFlatIP):
    def search(queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        similarities, labels = flat.search(queries, k)
        return labels, similarities
    return search


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def main() -> None:
    defaults = SimilarityConfig()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--clusters", type=int, default=3000)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--flat-queries", type=int, default=100, help="single queries timed on exact flat search")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--exact-max", type=int, default=defaults.exact_max)
    parser.add_argument("--nprobe", type=int, default=defaults.nprobe)
    parser.add_argument("--build-threads", type=int, default=2)
    parser.add_argument("--query-threads", type=int, default=1,
                        help="an IVF search of one query runs on one thread; more only adds OpenMP wake-ups")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    faiss.omp_set_num_threads(args.build_threads)
    mixture = Mixture.make(args.dim, args.clusters, args.seed)
    started = time.perf_counter()
    flat = exact_database(mixture, args.n, args.seed)
    queries = mixture.rows(QUERY_STREAM, args.queries, args.seed)
    print(f"data: {args.n:,d} x {args.dim} ({args.clusters} clusters) generated in {time.perf_counter() - started:.0f} s")
    truth_similarities, truth = flat.search(queries, args.k)
    random_pairs = np.einsum("ij,ij->i", queries, stored_rows(flat)[: len(queries)])
    print(f"median cosine: random pairs {np.median(random_pairs):.2f}, 10th exact neighbour "
          f"{np.median(truth_similarities[:, -1]):.2f}")

    index = SimilarityIndex(exact_max=args.exact_max, nprobe=args.nprobe, seed=args.seed)
    started = time.perf_counter()
    index.build(np.arange(args.n), stored_rows(flat))
    build_s = time.perf_counter() - started
    lists = index.lists_for(args.n)
    print(f"fmb index: {'exact flat' if lists == 0 else f'IVF {lists} lists, 8-bit codes, nprobe {args.nprobe}, exact re-rank'}; "
          f"built in {build_s:.1f} s ({args.build_threads} threads), peak RSS so far {peak_rss_gb():.2f} GB")

    faiss.omp_set_num_threads(args.query_threads)
    fmb_seconds, found = single_query_latencies(index.search, queries, args.k)
    flat_seconds, _ = single_query_latencies(flat_search(flat), queries[: args.flat_queries], args.k)
    fmb_p50, flat_p50 = 1e3 * np.median(fmb_seconds), 1e3 * np.median(flat_seconds)
    print(f"\nsingle top-{args.k} queries, {args.query_threads} thread(s):")
    print(f"{'':14s} {'queries':>8s} {'p50 ms':>8s} {'p95 ms':>8s} {'recall@10':>10s}")
    print(f"{'fmb index':14s} {len(fmb_seconds):8d} {fmb_p50:8.2f} {1e3 * np.percentile(fmb_seconds, 95):8.2f} "
          f"{recall_at(found, truth):10.3f}")
    print(f"{'exact flat':14s} {len(flat_seconds):8d} {flat_p50:8.2f} {1e3 * np.percentile(flat_seconds, 95):8.2f} {1.0:10.3f}")
    print(f"speed-up at p50: {flat_p50 / fmb_p50:.0f}x")

    expected = index.search(queries[:20], args.k)
    with tempfile.TemporaryDirectory(prefix="fmb-similarity-") as directory:
        started = time.perf_counter()
        index.save(Path(directory))
        save_s = time.perf_counter() - started
        del index  # the loaded copy replaces it, as in a later run
        size_gb = sum(p.stat().st_size for p in Path(directory).iterdir()) / 1e9
        started = time.perf_counter()
        loaded = SimilarityIndex.load(Path(directory), nprobe=args.nprobe)
        load_s = time.perf_counter() - started
        same = all(np.array_equal(a, b) for a, b in zip(loaded.search(queries[:20], args.k), expected))
    print(f"\nsaved in {save_s:.1f} s ({size_gb:.2f} GB on disk), loaded in {load_s:.1f} s, same results after load: {same}")
    print(f"peak RSS {peak_rss_gb():.2f} GB (the exact flat index for the ground truth holds "
          f"{args.n * args.dim * 4 / 1e9:.2f} GB of it)")


if __name__ == "__main__":
    main()
