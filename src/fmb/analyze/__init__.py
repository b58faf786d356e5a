"""Stage 4: analysis (evaluation against truth, agreement, similarity, probes)."""
