"""The registered detectors, one module each (`fmb.plugins.DETECTORS` names them by import path):
the normalizing flow, PyOD's Isolation Forest, and fmb's own kNN, LOF (neighbours by faiss) and ECOD,
which score as PyOD's do without keeping PyOD's copies of the fit sample."""
