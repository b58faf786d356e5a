"""The synthetic Euclid x DESI survey (design §4): realistic galaxies with Euclid VIS/NISP cutouts
and DESI fibre spectra, plus rare injected anomalies and a truth table.

    from fmb.data.synth import synthesize
    summary = synthesize(Path("data/synth"), n=2000, seed=42)

Modules: `library` (offline templates, filters, DESI noise; loaded once per process),
`population` (scaling relations), `sed` (spectra and band fluxes), `scene` (GalSim rendering,
fibre, noise), `components` / `anomalies` (object builders), `generate` (one chunk),
`survey` (the process pool and the Parquet writers).
"""

from fmb.data.synth.anomalies import ANOMALY_CLASSES, CLASSES
from fmb.data.synth.survey import synthesize

__all__ = ["ANOMALY_CLASSES", "CLASSES", "synthesize"]
