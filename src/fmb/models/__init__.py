"""Stage 1-2 models: one encoder interface, one module per model, one shared trainer."""
