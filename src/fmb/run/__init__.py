"""Stage graph, caching and the `fmb run` pipeline."""
