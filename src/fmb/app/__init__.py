"""The discovery app (`fmb app`): look at a run's ranked objects, label them, re-rank from the labels.

* `fmb.app.labels`: the append-only label log (SQLite, WAL), its replay, export and import;
* `fmb.app.rerank`: the re-rankers (Astronomaly's neighbour score, a Gaussian process with expected
  improvement, label propagation), the random slice of every page and the discovery curve;
* `fmb.app.server`: the local web server.
"""
