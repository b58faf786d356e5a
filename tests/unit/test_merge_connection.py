"""The detect merge's DuckDB connection is never left busy: a one-row query (the critic's
Spearman), a duplicate check and a stream abandoned half-way leave it free for the consensus join
that follows on the same connection, as in the demo's merge of four models."""

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fmb.detect.consensus import write_consensus
from fmb.detect.population import BATCH_ROWS, connection, first_duplicate, parquet_source, rows, spearman, stream
from fmb.detect.scores import CALIBRATED_FUSION, CONSENSUS, FIT_SAMPLE


def score_table(path: Path, seed: int, n: int = 3 * BATCH_ROWS // 2) -> Path:
    rng = np.random.default_rng(seed)
    pq.write_table(pa.table({"object_id": np.arange(n, dtype=np.int64), CALIBRATED_FUSION: rng.exponential(size=n),
                             FIT_SAMPLE: rng.random(n) < 0.5, "mismatch": rng.normal(size=n),
                             "mismatch_cosine": rng.normal(size=n)}), path)
    return path


def test_one_row_queries_and_an_abandoned_stream_leave_the_connection_free(tmp_path: Path):
    tables = {"a": score_table(tmp_path / "a.parquet", 0), "b": score_table(tmp_path / "b.parquet", 1)}
    with connection(0.5, tmp_path / "spill") as con:
        source = parquet_source([tables["a"]], ["object_id", "mismatch", "mismatch_cosine"])
        assert first_duplicate(con, source) is None
        assert -0.1 < spearman(con, source, "mismatch", "mismatch_cosine") < 0.1
        with stream(con, f"SELECT * FROM {source}") as batches:
            assert len(next(iter(batches))) == BATCH_ROWS  # more batches follow: left half-read
        assert rows(con, "SELECT 42") == [(42,)]
        assert write_consensus(con, tables, 0.05, tmp_path / "consensus.parquet")
    consensus = pq.read_table(tmp_path / "consensus.parquet")
    assert consensus.num_rows == 3 * BATCH_ROWS // 2 and CONSENSUS in consensus.column_names
    assert not (tmp_path / "spill").exists()
