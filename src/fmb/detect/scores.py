"""The score-table contract: column names, the one ranking rule, the default ranking.

A score table (`runs/<name>/scores/<model>.parquet`) has one row per object and

* ``score_<modality>_<method>``  a detector's score (higher = more anomalous), with
  ``z_<modality>_<method>`` its robust z, ``pct_<modality>_<method>`` and ``rank_<modality>_<method>``;
  the method ``residual`` is the reconstruction residual off the embedding's PCA (or the model's own
  noise-weighted residual), the method ``ensemble`` the calibrated combination of the modality's
  density detectors and ``combined`` that of its ensemble, residual and redshift score (every way
  the modality is odd), both in -log10 p;
* ``p_<stem>``: every score's calibrated tail probability (`fmb.detect.calibrate`);
* ``mismatch`` (fused), ``mismatch_residual`` and, for aligned models, ``mismatch_cosine``, each
  with ``pct_``, ``rank_`` and ``p_``;
* ``score_<modality>_redshift``: odd for its redshift (`fmb.detect.conditional`), NaN for an object
  without one, with its ``p_``; it is a member of the modality's ``combined`` score.
  ``score_redshift`` is the three combined, to read (fused nowhere: the modalities' channels hold
  them). Not ranked (no ``pct_``/``rank_``): the percentile fusions' common set does not depend
  on whether an object has a redshift;
* ``fused_cauchy``: -log10 of the Cauchy combination of the calibrated tail probabilities of the
  image's and the spectrum's combined scores and of the misalignment (the joint embedding's only
  where one of them is missing: `calibrated_inputs`): an object odd in any one way rises;
  ``p_fused_cauchy`` its tail probability (`fmb.detect.fusion`);
* ``fused_adjusted`` (the default ranking): the same channels, each calibrated among ordinary
  objects with the same nuisance covariates (crowding, edges; see `fmb.detect.nuisance`) before
  the Cauchy combination, which is calibrated within them again: a nuisance tail cannot flood it;
  ``p_fused_adjusted``;
* the percentile fusions of the original, ``fused_geo`` ("odd in every way"), ``fused_min``,
  ``fused_avg``, ``fused_all``, ``fused_max``, and ``uplift``;
* ``in_common_set``: the object has every input of the percentile fusion; ``in_fit_sample``: it
  was in the sample the detectors and calibrations were fitted on.

The cross-model consensus table (`scores/consensus.parquet`) holds ``fused_consensus``: the Cauchy
combination of every model's ``p_fused_cauchy``, recalibrated, with ``p_fused_consensus`` and
``n_models``.

**Ranking rule** (one for every ranked list in fmb): rank 1 is the highest score; tied scores
share the best rank of their group (a tie carries nothing to order by), and where a list must put
tied objects one after the other, the lower object id comes first. Non-finite scores are unranked.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

MODALITIES = ("image", "spectrum", "joint")
MISMATCH = "mismatch"  # the misalignment score that is fused
MISMATCH_COLUMNS = (MISMATCH, "mismatch_residual", "mismatch_cosine")
ENSEMBLE, RESIDUAL, COMBINED = "ensemble", "residual", "combined"  # score methods that are not registered detectors
REDSHIFT = "redshift"  # the method name of the redshift-conditional scores
REDSHIFT_CHANNEL = "score_redshift"
CALIBRATED_FUSION = "fused_cauchy"
ADJUSTED_FUSION = "fused_adjusted"
CONSENSUS = "fused_consensus"
FUSED = (ADJUSTED_FUSION, CALIBRATED_FUSION, "fused_geo", "fused_min", "fused_avg", "fused_all", "fused_max")
UPLIFT = "uplift"
COMMON_SET = "in_common_set"
FIT_SAMPLE = "in_fit_sample"
#: The default ranking that galleries, similarity examples, agreement and the app show first: chosen
#: by principle, not by any survey's labels: calibrated, valid under dependence, odd in any one way
#: (the Cauchy rule), odd for its redshift as well as odd at all, and odd only beyond what ordinary
#: objects observed the same way (same crowding, same edges) show, so that a tail of nuisances
#: cannot fill its top. Score tables written before it have `fused_cauchy`, which `headline` falls
#: back to.
DEFAULT_RANKING = ADJUSTED_FUSION


def score_column(modality: str, method: str) -> str:
    return f"score_{modality}_{method}"


def z_column(modality: str, method: str) -> str:
    return f"z_{modality}_{method}"


def _stem(column: str) -> str:
    """The name a score's pct_/rank_ columns carry: score_image_flow -> image_flow, mismatch -> mismatch."""
    return column.removeprefix("score_")


def p_column(column: str) -> str:
    return f"p_{_stem(column)}"


def pct_column(column: str) -> str:
    return f"pct_{_stem(column)}"


def rank_column(column: str) -> str:
    return f"rank_{_stem(column)}"


def parse_score_column(column: str) -> tuple[str, str] | None:
    """(modality, method) of a ``score_<modality>_<method>`` column, else None."""
    if not column.startswith("score_"):
        return None
    modality, _, method = _stem(column).partition("_")
    return (modality, method) if modality in MODALITIES and method else None


def fusion_inputs(method: str) -> list[str]:
    """The columns the percentile fusion combines: each modality's `method` score and the misalignment."""
    return [score_column(modality, method) for modality in MODALITIES] + [MISMATCH]


def calibrated_inputs(columns) -> list[str]:
    """The columns `fused_cauchy` combines, those present: each way of being odd once. The image's
    and the spectrum's combined scores (each modality's density ensemble and residual) and the
    misalignment; the joint embedding's combined score only where one of those three is missing,
    because the joint embedding is the two modalities side by side: its density sees an odd image,
    an odd spectrum or an odd pairing, each of which has its own channel when all three are there,
    and counting it too would count every way twice."""
    present = set(columns)
    own = [score_column("image", COMBINED), score_column("spectrum", COMBINED), MISMATCH]
    wanted = own if set(own) <= present else [*own[:2], score_column("joint", COMBINED), MISMATCH]
    return [c for c in wanted if c in present]


def is_score(column: str) -> bool:
    """A column that ranks objects (higher = more anomalous): detector, misalignment or fused score."""
    return column.startswith(("score_", "fused_")) or column in MISMATCH_COLUMNS


def is_redshift_score(column: str) -> bool:
    return column == REDSHIFT_CHANNEL or (column.startswith("score_") and column.endswith(f"_{REDSHIFT}"))


def ranked_columns(columns) -> list[str]:
    """The columns of a table that get pct_/rank_ columns: detector and misalignment scores (not
    the redshift scores, which objects without a redshift lack)."""
    return [c for c in columns if (c.startswith("score_") and not is_redshift_score(c)) or c in MISMATCH_COLUMNS]


# -- the ranking rule ------------------------------------------------------------------------------
def rank_descending(scores: np.ndarray) -> np.ndarray:
    """1 = highest score; ties share the best rank of their group."""
    from scipy.stats import rankdata

    return rankdata(-np.asarray(scores), method="min").astype(np.int64)


def percentile(scores: np.ndarray) -> np.ndarray:
    """p = (N - rank + 1) / N: 1 for the most anomalous object, ties sharing the higher value."""
    return percentile_of_rank(rank_descending(scores), len(scores))


def percentile_of_rank(rank, n: int):
    """The percentile of a rank among `n` objects (the ranking rule's): (n - rank + 1) / n."""
    return (n - rank + 1) / n


def finite(frame: pd.DataFrame, column: str) -> pd.DataFrame:
    return frame[np.isfinite(frame[column].to_numpy(dtype=float))]


def ranked(frame: pd.DataFrame, column: str) -> pd.DataFrame:
    """The rows with a finite `column`, best first by the ranking rule, with a 1-based ``rank``."""
    scored = finite(frame, column)
    ordered = scored.sort_values([column, "object_id"], ascending=[False, True], kind="stable").copy()
    ordered.insert(0, "rank", rank_descending(ordered[column].to_numpy(dtype=float)))
    return ordered


def top(frame: pd.DataFrame, column: str, count: int) -> pd.DataFrame:
    """The first `count` rows of `ranked`."""
    return ranked(frame, column).head(count)


def ranks_by_id(frame: pd.DataFrame, column: str) -> pd.Series:
    """Rank of each object (indexed by object id) over the objects with a finite score."""
    ordered = ranked(frame, column)
    return pd.Series(ordered["rank"].to_numpy(), index=pd.Index(ordered["object_id"].to_numpy(), name="object_id"))


def top_fraction(scores: np.ndarray, fraction: float) -> np.ndarray:
    """Positions of the top `fraction` of `scores` (at least one) in ranking order; ties keep the
    order given, which for a score table is ascending object id."""
    order = np.argsort(-np.asarray(scores, dtype=float), kind="stable")
    return order[: max(1, int(round(fraction * len(order))))]


# -- the default ranking ---------------------------------------------------------------------------
def headline(columns, preferred: str | None = None, method: str = "flow", usable=None) -> str | None:
    """The column a view ranks by: `preferred` (a user's choice), else the default ranking, else the
    joint density score of `method`, else the first detector score; only columns `usable` accepts
    (default: any present) are chosen. None when the table has no score at all."""
    columns = list(columns)
    candidates = [preferred, DEFAULT_RANKING, CALIBRATED_FUSION, score_column("joint", method),
                  *sorted(c for c in columns if c.startswith("score_"))]
    accept = usable or (lambda _column: True)
    return next((c for c in candidates if c and c in columns and accept(c)), None)


def frame_headline(frame: pd.DataFrame, preferred: str | None = None, method: str = "flow") -> str | None:
    """`headline` over the columns of `frame` that hold at least one finite score."""
    return headline(frame.columns, preferred, method,
                    usable=lambda c: bool(np.isfinite(frame[c].to_numpy(dtype=float)).any()))


def summary_columns(columns, method: str) -> list[str]:
    """The scores a summary view shows (figures, the evaluation heatmap): the fusion's inputs,
    the other misalignment scores, then the fused scores, in that order; baselines stay in tables."""
    columns = list(columns)
    residuals = [score_column(modality, RESIDUAL) for modality in MODALITIES]
    wanted = dict.fromkeys(fusion_inputs(method) + fusion_inputs(ENSEMBLE) + residuals + fusion_inputs(COMBINED)
                           + [c for c in MISMATCH_COLUMNS if c != MISMATCH] + list(FUSED))
    return [c for c in wanted if c in columns]


# -- the run's score tables ------------------------------------------------------------------------
def score_tables(config) -> dict[str, Path]:
    """{model: score table} for the run's models (`run.models`) that have one, in that order."""
    tables = {model: config.layout.scores.table(model) for model in config.run.models}
    return {model: path for model, path in tables.items() if path.is_file()}


def load_score_tables(config, wanted=None) -> dict[str, pd.DataFrame]:
    """The run's score tables; only the columns `wanted` accepts (a predicate on the name), when given:
    a table holds ~100 columns per object, a view needs a few."""
    import pyarrow.parquet as pq

    def columns(path: Path) -> list[str] | None:
        return None if wanted is None else [c for c in pq.read_schema(path).names if wanted(c)]

    return {model: pd.read_parquet(path, columns=columns(path)) for model, path in score_tables(config).items()}
