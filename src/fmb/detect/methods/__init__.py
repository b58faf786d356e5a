"""The registered detectors, one module each (`fmb.plugins.DETECTORS` names them by import path):
the normalizing flow, the PyOD baselines (Isolation Forest, LOF, kNN) and fmb's own ECOD."""
