"""Stage 3: anomaly detection."""

from __future__ import annotations

from pathlib import Path


def scores_dir(config) -> Path:
    """runs/<name>/scores: scores/<model>.parquet and the saved detectors (light to import)."""
    return config.run_dir / "scores"
