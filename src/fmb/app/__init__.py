"""The discovery app (`fmb app`): look at a run's ranked objects, label them, re-rank from the labels,
and take the candidates away.

* `fmb.app.server`: the HTTP routes only (and what a request may reach);
* `fmb.app.view`: the run as the app shows it (lists, one object, labels), raising fmb errors;
* `fmb.app.tables`, `fmb.app.neighbours`: the score tables and catalog it reads, the similarity indexes;
* `fmb.app.render`: its images (drawn by `fmb.viz`) and their cache;
* `fmb.app.labels`, `fmb.app.label_files`: the append-only label log (SQLite, WAL), its replay, export
  and import, and the label files it imports (CSV, Parquet, FITS, VOTable);
* `fmb.app.rerank`, `fmb.app.rerankers`, `fmb.app.graph`, `fmb.app.pages`: re-ranking from labels
  (the re-rankers are plugins, `fmb.plugins.RERANKERS`), the k-NN graph, pages and the discovery curve;
* `fmb.app.export`, `fmb.app.samp`: the candidate table as FITS, VOTable, CSV or DS9 regions, and over SAMP.
"""
