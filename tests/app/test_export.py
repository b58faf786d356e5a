"""Candidates leave fmb: `fmb export` (FITS, VOTable, CSV, object files), the app's download and its
SAMP send to a hub started here, and `fmb labels import` of an export into a fresh run (same labels)."""

import io
import re
import threading
import warnings
from pathlib import Path

import astropy.units as u
import numpy as np
import pandas as pd
import pytest
from astropy.io import fits
from astropy.table import Table
from conftest import run_config, run_fmb
from fastapi.testclient import TestClient

from fmb.app.labels import LabelStore
from fmb.app.server import create_app
from fmb.detect.scores import frame_headline, ranked
from tests.app.live import private_copy
from tests.conftest import run_cli

LOCAL = "http://127.0.0.1"
NOTE = "two nuclei? ask for a deeper spectrum — Hα looks doubled"


@pytest.fixture(scope="module")
def project(scored_run: Path, tmp_path_factory) -> Path:
    """A private copy of the scored run with three labels: an interest with tags and a note, a note
    alone, and a dull one."""
    copy = private_copy(scored_run, tmp_path_factory.mktemp("export") / "project", run_config(scored_run).layout.app.dir)
    config = run_config(copy)
    store = LabelStore(config.layout.app.labels_db)
    scores = pd.read_parquet(config.layout.scores.table("pixels"))
    ids = [int(i) for i in ranked(scores, frame_headline(scores)).object_id.iloc[-3:]]  # never in a top 20
    store.add(ids[0], 5, ["lens", "merger"], NOTE, "ada")
    store.add(ids[1], None, [], "check the photometry", "ada")
    store.add(ids[2], 0, ["artefact"], "", "bob")
    store.close()
    return copy


@pytest.fixture(scope="module")
def labelled(project: Path) -> dict:
    """object_id -> (interest or None, tags, note) as the run's label log holds them."""
    return label_state(LabelStore(run_config(project).layout.app.labels_db))


def label_state(store: LabelStore) -> dict:
    return {int(row.object_id): (None if row.interest is pd.NA else int(row.interest), list(row.tags), row.note)
            for row in store.current().itertuples()}


def labels_of(table: Table) -> dict:
    """The labels an export table carries, as `labelled` has them."""
    def text(value):  # FITS text comes back as bytes, an empty CSV cell as a masked value
        return "" if np.ma.is_masked(value) else value.decode() if isinstance(value, bytes) else str(value)
    return {int(row["object_id"]): (None if int(row["interest"]) < 0 else int(row["interest"]),
                                    [tag for tag in text(row["tags"]).split(";") if tag], text(row["note"]))
            for row in table if text(row["user"])}


def test_fmb_export_writes_fits_votable_and_csv_with_positions_and_labels(project: Path, labelled: dict):
    for suffix, kind in (("fits", "fits"), ("vot", "votable"), ("csv", "ascii.csv")):
        run_fmb(project, "export", f"out/candidates.{suffix}", "--top", "20")
        table = Table.read(project / f"out/candidates.{suffix}", format=kind)
        assert len(table) == 20 + 3 and sum(str(value) == "True" for value in table["in_top"]) == 20
        assert labels_of(table) == labelled
        assert np.isfinite(table["ra"]).all() and np.isfinite(table["dec"]).all()  # the synthetic footprint
        assert ((np.abs(table["dec"] + 28.09) <= 1.5)).all()
        assert list(table["rank_pixels"][:20]) == list(range(1, 21))  # the ranking's order
    votable = Table.read(project / "out/candidates.vot", format="votable")
    assert str(votable["ra"].unit) == "deg" and votable["ra"].meta.get("ucd") == "pos.eq.ra;meta.main"


def test_fmb_export_writes_a_ds9_region_file_at_the_tables_positions(project: Path, labelled: dict):
    """A .reg file marks each candidate on an image in DS9 or Aladin: one fk5 circle per object at the
    table's RA/Dec, labelled with its id and rank, red where labelled interesting."""
    ranking = ["--top", "20", "--ranking", "score_image_knn"]  # the rank shown is this ranking's
    run_fmb(project, "export", "out/candidates.csv", *ranking)
    run_fmb(project, "export", "out/candidates.reg", *ranking)
    table = Table.read(project / "out/candidates.csv", format="ascii.csv")
    lines = (project / "out/candidates.reg").read_text().splitlines()
    assert lines[0] == "# Region file format: DS9 version 4.1" and lines[3] == "fk5"
    circles = [re.match(r'circle\(([-\d.]+),([-+\d.]+),2"\) # text=\{(\d+)( #\d+)?\}( color=red)?$', line)
               for line in lines[4:]]
    assert all(circles) and len(circles) == len(table) and any(circle[5] for circle in circles)
    for circle, row in zip(circles, table):
        assert int(circle[3]) == row["object_id"] and (int(circle[4][2:]) if circle[4] else -1) == row["rank"]
        np.testing.assert_allclose([float(circle[1]), float(circle[2])], [row["ra"], row["dec"]], atol=1e-6)
        interest = (labelled.get(int(row["object_id"])) or (None,))[0]
        assert bool(circle[5]) == (interest is not None and interest >= 4)


def test_fmb_export_objects_writes_cutouts_and_spectra(project: Path):
    run_fmb(project, "export", "out/top.fits", "--top", "2", "--objects")
    files = sorted((project / "out/top-objects").glob("*.fits"))
    assert len(files) == 2 + 3
    with fits.open(files[0]) as units:
        assert [unit.name for unit in units[1:]] == ["VIS", "NISP_Y", "NISP_J", "NISP_H", "SPECTRUM"]
        assert units["VIS"].data.ndim == 2 and len(units["SPECTRUM"].data["WAVELENGTH"]) == 7781
        assert np.isfinite(units[0].header["RA"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a unit FITS does not know is a warning, and dropped
        spectrum = Table.read(files[0], hdu="SPECTRUM")
    flux = 1e-17 * u.erg / (u.s * u.cm**2 * u.AA)
    assert spectrum["FLUX"].unit == flux and spectrum["IVAR"].unit == flux**-2
    # a shorter export into the same folder leaves only its own objects (10 files once passed for candidates)
    run_fmb(project, "export", "out/top.fits", "--top", "0", "--objects")
    assert len(list((project / "out/top-objects").glob("*.fits"))) == 3
    mine = project / "out/mine-objects"  # a folder fmb did not make: nothing of it is removed
    mine.mkdir()
    (mine / "123.fits").write_bytes(b"kept")
    run_fmb(project, "export", "out/mine.fits", "--top", "0", "--objects")
    assert (mine / "123.fits").read_bytes() == b"kept"


def test_export_then_labels_import_on_a_fresh_run_gives_the_same_labels(project: Path, labelled: dict):
    for suffix in ("fits", "vot", "csv"):
        run_fmb(project, "export", f"out/round.{suffix}", "--top", "5")
        run_fmb(project, "labels", "import", f"out/round.{suffix}", "--name", f"fresh-{suffix}", "--user", "import")
        fresh = LabelStore(run_config(project).layout.app.labels_db.parents[2] / f"fresh-{suffix}/app/labels.sqlite")
        events = fresh.events()
        assert set(events.kind) == {"import"} and len(events) == 3  # merged as events, the unlabelled rows skipped
        assert label_state(fresh) == labelled


def test_labels_import_keeps_who_gave_each_label(project: Path, labelled: dict):
    """An export carries each label's user; an import without --user recorded them all as "import"."""
    given = LabelStore(run_config(project).layout.app.labels_db).current().set_index("object_id")["user"]
    run_fmb(project, "export", "out/users.csv", "--top", "0")
    run_fmb(project, "labels", "import", "out/users.csv", "--name", "fresh-users")
    fresh = LabelStore(run_config(project).layout.app.labels_db.parents[2] / "fresh-users/app/labels.sqlite")
    kept = fresh.current().set_index("object_id")["user"]
    assert kept.sort_index().tolist() == given.sort_index().tolist() and "import" not in set(kept)


def test_labels_of_objects_not_in_the_runs_survey_are_refused_whole(project: Path, labelled: dict):
    """A label file of another survey (here one row of an id the run does not have) adds nothing:
    it would pair a label with no object, or with the wrong one."""
    before = LabelStore(run_config(project).layout.app.labels_db).events()
    stray = project / "out" / "stray.csv"
    stray.parent.mkdir(exist_ok=True)
    known = int(before.object_id.iloc[0])
    pd.DataFrame({"object_id": [known, 123], "interest": [2, 3]}).to_csv(stray, index=False)
    result = run_cli(project, "labels", "import", str(stray))
    assert result.exit_code != 0
    assert "row 2: object 123, field object_id: not in this run's survey" in str(result.exception)
    assert LabelStore(run_config(project).layout.app.labels_db).events().equals(before)


def test_the_app_downloads_the_same_table(project: Path, labelled: dict):
    client = TestClient(create_app(run_config(project)), base_url=LOCAL)
    answer = client.get("/api/export.fits", params={"top": 10})
    assert answer.status_code == 200 and "attachment" in answer.headers["content-disposition"]
    assert labels_of(Table.read(io.BytesIO(answer.content), format="fits")) == labelled
    regions = client.get("/api/export.reg", params={"top": 10})
    assert regions.status_code == 200 and regions.text.startswith("# Region file format: DS9")
    assert client.get("/api/export.exe").status_code == 400  # 404/422 would do; it is JSON either way
    assert client.get("/api/export.csv", params={"top": -1}).json()["error"].startswith("top")


def test_the_app_sends_the_table_over_samp(project: Path, labelled: dict, tmp_path: Path, monkeypatch):
    """A real SAMP hub (astropy's) and a real client subscribed to table.load.votable, as TOPCAT is."""
    from pyvo.samp import SAMPHubServer, SAMPIntegratedClient

    lockfile = tmp_path / "samp-lock"
    hub = SAMPHubServer(web_profile=False, lockfile=str(lockfile), timeout=60)
    hub.start()
    monkeypatch.setenv("SAMP_HUB", f"std-lockurl:{lockfile.as_uri()}")
    received, arrived = [], threading.Event()
    receiver = SAMPIntegratedClient(name="table-viewer")
    try:
        receiver.connect()
        def got(*args, **kwargs):  # the message's parameters, however the client passes them on
            received.extend(part for part in (*args, *kwargs.values()) if isinstance(part, dict) and "url" in part)
            arrived.set()
        receiver.bind_receive_notification("table.load.votable", got)
        client = TestClient(create_app(run_config(project)), base_url=LOCAL)
        answer = client.post("/api/samp", json={"top": 7})
        assert answer.status_code == 200, answer.text
        assert answer.json()["sent_to"] == ["table-viewer"] and answer.json()["objects"] == 7 + 3
        assert arrived.wait(30)
        table = Table.read(received[0]["url"].removeprefix("file://"), format="votable")
        assert labels_of(table) == labelled
    finally:
        receiver.disconnect()
        hub.stop()
    refused = client.post("/api/samp", json={"top": 7})  # no hub any more: one line saying what to do
    assert refused.status_code == 400 and "no SAMP hub" in refused.json()["error"]
