"""Where an object is on the sky: its position (the data's own, from the index, else the catalog's)
as an astropy `SkyCoord`, written out for people, and links to look it up elsewhere: the sky viewers
ESASky and the Legacy Surveys viewer, and SIMBAD and NED searches around it.
"""

from __future__ import annotations

from urllib.parse import urlencode

import numpy as np
import pandas as pd

#: Search radius of the archive links: a DESI fibre is 1.5 arcsec across, Euclid's PSF 0.2 arcsec.
SEARCH_RADIUS_ARCSEC = 5.0
VIEWER_FOV_DEG = 0.02  # about a cutout's field


def object_coordinates(index, catalog: pd.DataFrame | None) -> pd.DataFrame:
    """ra, dec (degrees, NaN unknown) of every indexed object, by object_id: the position its data
    carry (`fmb.data.index.ObjectIndex`), else the catalog's (`fmb.data.catalog.catalog_coordinates`)."""
    from fmb.data.catalog import catalog_coordinates

    frame = pd.DataFrame({"ra": index.ra, "dec": index.dec}, index=pd.Index(index.ids, name="object_id"))
    listed = catalog_coordinates(catalog).reindex(frame.index)
    missing = frame["ra"].isna().to_numpy()
    frame.loc[missing, ["ra", "dec"]] = listed.loc[missing, ["ra", "dec"]].to_numpy()
    return frame


def sky_position(ra: float, dec: float) -> dict | None:
    """An object's position for a page: degrees, sexagesimal and galactic text, and links out; None
    when unknown."""
    if not (np.isfinite(ra) and np.isfinite(dec)):
        return None
    import erfa
    from astropy import units as u
    from astropy.coordinates import SkyCoord

    coordinate = SkyCoord(ra * u.deg, dec * u.deg, frame="icrs")
    # SOFA's ICRS -> galactic rotation (within 0.1 arcsec of astropy's Galactic frame, which goes through
    # FK5 and costs ~1000x more: the object page asks for it on every object)
    longitude, latitude = np.degrees(erfa.icrs2g(np.radians(ra), np.radians(dec)))
    return {"ra": float(ra), "dec": float(dec),
            "sexagesimal": coordinate.to_string("hmsdms", sep=":", precision=2),
            "galactic": f"l = {longitude:.4f}, b = {latitude:.4f}",
            "links": sky_links(float(ra), float(dec))}


def sky_links(ra: float, dec: float) -> dict[str, str]:
    """Where to look at or search around (ra, dec), by name."""
    radius = SEARCH_RADIUS_ARCSEC
    return {
        "ESASky": "https://sky.esa.int/esasky/?" + urlencode(
            {"target": f"{ra:.6f} {dec:.6f}", "fov": VIEWER_FOV_DEG, "sci": "true"}),
        "Legacy Surveys": "https://www.legacysurvey.org/viewer?" + urlencode(
            {"ra": f"{ra:.6f}", "dec": f"{dec:.6f}", "layer": "ls-dr10", "zoom": 16}),
        "SIMBAD": "https://simbad.cds.unistra.fr/simbad/sim-coo?" + urlencode(
            {"Coord": f"{ra:.6f} {dec:+.6f}", "CooFrame": "ICRS", "Radius": radius, "Radius.unit": "arcsec"}),
        "NED": "https://ned.ipac.caltech.edu/conesearch?" + urlencode(
            {"search_type": "Near Position Search", "coordinates": f"{ra:.6f}d {dec:+.6f}d",
             "radius": radius / 60, "in_csys": "Equatorial", "in_equinox": "J2000"}),
    }
