"""The cross-model consensus (scores/consensus.parquet): for every object of any model, the Cauchy
combination of the models' calibrated fused tail probabilities (those it has), recalibrated on the
objects in every model's fit sample. The models' tables are joined by id out of core
(`fmb.detect.population`) and the result is written batch by batch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fmb.detect.calibrate import TailCalibrator, cauchy_combine, significance
from fmb.detect.population import quote, quote_literal, stream
from fmb.detect.scores import CALIBRATED_FUSION, CONSENSUS, FIT_SAMPLE, p_column
from fmb.io import atomic_path


def write_consensus(con, tables: dict[str, Path], tail: float, out: Path) -> bool:
    """Write the consensus of the models' score tables that have `fused_cauchy`; False (nothing
    written) with fewer than two such models."""
    tables = {model: path for model, path in tables.items() if CALIBRATED_FUSION in pq.read_schema(path).names}
    if len(tables) < 2:
        return False
    joined, count = _joined(tables), len(tables)
    in_every_fit = " AND ".join(f"coalesce(fit_{k}, false)" for k in range(count))
    reference = con.sql(f"SELECT * FROM {joined} WHERE {in_every_fit}").to_arrow_table()  # read whole
    calibrator = TailCalibrator(tail).fit(_statistic(reference, count)[0])
    with atomic_path(out) as temporary, stream(con, f"SELECT * FROM {joined} ORDER BY object_id") as batches:
        writer = None
        for batch in batches:
            statistic, n_models = _statistic(batch, count)
            log_p = calibrator.log_p_value(statistic)
            table = pa.table({"object_id": batch.column("object_id"), CONSENSUS: significance(log_p),
                              p_column(CONSENSUS): np.exp(log_p), "n_models": n_models})
            writer = writer or pq.ParquetWriter(temporary, table.schema, compression="zstd")
            writer.write_table(table)
        writer.close()
    return True


def _joined(tables: dict[str, Path]) -> str:
    """Every object of any table: object_id, sig_<k> (the k-th model's fused_cauchy) and fit_<k>."""
    sides = [f"(SELECT object_id, {quote(CALIBRATED_FUSION)} AS sig_{k}, {quote(FIT_SAMPLE)} AS fit_{k} "
             f"FROM read_parquet({quote_literal(str(path))})) AS m{k}" for k, path in enumerate(tables.values())]
    return "(SELECT * FROM " + " FULL OUTER JOIN ".join(
        side if k == 0 else f"{side} USING (object_id)" for k, side in enumerate(sides)) + ")"


def _statistic(rows, count: int) -> tuple[np.ndarray, np.ndarray]:
    """The Cauchy combination's significance of each row's models, and how many models it has."""
    # the significance (-log10 p), not p itself, which underflows for the most extreme objects
    significances = np.column_stack([rows.column(f"sig_{k}").to_numpy(zero_copy_only=False) for k in range(count)])
    log_p = -np.log(10.0) * np.asarray(significances, dtype=float)
    return significance(cauchy_combine(log_p)), np.isfinite(log_p).sum(axis=1)
