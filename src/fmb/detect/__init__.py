"""Stage 3: anomaly detection."""
