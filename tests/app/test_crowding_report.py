"""Issue 29 item 2: the crowding covariates the pixel reference stores beside its embeddings, summarised
in the run's report (over every object, and at the top of the default ranking)."""

from pathlib import Path

import pandas as pd
from conftest import run_config

from fmb.analyze.report import _crowding_section, crowding_table
from fmb.detect.nuisance import run_crowding
from fmb.detect.scores import DEFAULT_RANKING, ranked


def test_the_report_compares_the_crowding_of_the_top_with_every_object(scored_run: Path):
    config = run_config(scored_run)
    crowding = run_crowding(config)
    assert {"neighbours", "neighbour_flux_ratio", "neighbour_distance_px", "blended", "edge"} <= set(crowding.columns)
    assert 0 < (crowding["blended"] > 0).mean() < 1  # the realistic sky blends some objects, not all

    frame = crowding_table(config).set_index("objects")
    everyone = frame.loc[f"all {len(crowding):,} objects"]
    assert everyone["blended"] == f"{(crowding['blended'] > 0).mean():.1%}"
    assert everyone["cut by an edge"] == f"{(crowding['edge'] > 0).mean():.1%}"
    scores = pd.read_parquet(config.layout.scores.table("pixels"), columns=["object_id", DEFAULT_RANKING])
    top = crowding.reindex(ranked(scores, DEFAULT_RANKING)["object_id"].head(10))  # 1 % of 300 is under the floor
    row = frame.loc["top 10, pixels ranking"]
    assert row["with a neighbour"] == f"{(top['neighbours'] > 0).mean():.1%}"
    assert abs(row["mean neighbours"] - top["neighbours"].mean()) < 1e-9

    anchor, title, content = _crowding_section(config)
    assert (anchor, title) == ("crowding", "Crowding") and "top 10, pixels ranking" in content
