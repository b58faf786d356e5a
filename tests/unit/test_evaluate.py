import numpy as np
import pandas as pd
import pytest

from fmb.analyze.evaluate import evaluate_frame, recall_at


def test_recall_at_by_hand():
    labels = np.array([1, 0, 0, 1, 0, 0, 0, 0, 0, 0], bool)
    scores = np.array([9, 8, 7, 1, 0, 0, 0, 0, 0, 0], float)
    assert recall_at(labels, scores, 0.1) == 0.5  # top 1 object holds one of two positives
    assert recall_at(labels, scores, 0.4) == 1.0  # top 4 hold both


def test_per_class_metrics_leave_other_anomalies_out():
    scores = pd.DataFrame({"object_id": range(6), "score_image_flow": [6, 5, 4, 3, 2, 1.0]})
    truth = pd.DataFrame({"object_id": range(6), "anomaly_class": ["star", "merger", "none", "none", "none", "star"]})
    table = evaluate_frame(scores, truth).set_index("class")
    assert table.loc["merger", "ap"] == pytest.approx(1.0)  # the star above it does not count against it
    assert table.loc["merger", "auroc"] == pytest.approx(1.0)
    assert table.loc["star", "positives"] == 2 and table.loc["all", "positives"] == 3
