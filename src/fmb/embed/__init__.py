"""Stage 2: batched, sharded, resumable embedding extraction."""
