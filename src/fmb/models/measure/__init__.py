"""Measurements astronomers make on one object, shared by the pixel and physical references:
`deblend` (find the central source and its neighbours in a cutout), `morphology` (the central
source's shape and light) and `spectral` (indices, lines and colours of a spectrum)."""
