"""The re-rankers: each orders a run's objects from the labels given so far, one module each,
registered in `fmb.plugins` (``RERANKERS``) like the encoders and detectors.

A re-ranker is a scikit-learn-style estimator (`fmb.app.rerankers.base.Reranker`): parameters in
``__init__``, ``fit(X, anomaly, labelled_index, interest)`` and one score per row of X in ``scores_``
(higher = show first). With no label each gives the anomaly ranking itself, and each is
deterministic for its ``seed``. ``astronomaly``, ``gp_ei``, ``propagation`` and ``active_search``
each say in their module what they do and where their parameters come from; ``bandit`` (the app's
default) lets them compete for the slots of each page and learns from the labels which one works.

All four learn on the same features (`fmb.app.rerank.load_inputs`): the model's joint embedding beside
the detector's evidence profile (-log10 p of each way of being odd that the default ranking fuses),
each block scaled to unit total variance. Every parameter was fixed from the sources before any
benchmark ran; the evidence profile and the cold-start rule were each adopted after one comparison on
the development survey, and active search was added after another, where it tied with propagation
(`benchmarks/labelling_sim.py`, `benchmarks/RESULTS.md`).
"""
