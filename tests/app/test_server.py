"""The app's server on a scored run: its lists, object views, images and labels, and what it refuses
(bad ids, traversal, foreign hosts, missing tokens, non-JSON writes), each with a 4xx and a JSON error."""

import http.client
import json
from pathlib import Path

import pandas as pd
import pytest
from conftest import run_config
from fastapi.testclient import TestClient

from fmb.app.labels import LabelStore
from fmb.app.rerank import DEFAULT_METHOD, ranking_name
from fmb.plugins import RERANKERS
from fmb.app.access import MAX_BODY_BYTES, is_loopback
from fmb.app.server import create_app, serve
from fmb.detect.scores import DEFAULT_RANKING as HEADLINE, ranked
from fmb.errors import FmbError
from tests.app.live import LiveServer, private_copy, raw_get

LOCAL = "http://127.0.0.1"
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def project(scored_run: Path, tmp_path_factory) -> Path:
    return private_copy(scored_run, tmp_path_factory.mktemp("server") / "project", run_config(scored_run).layout.app.dir)


@pytest.fixture(scope="module")
def config(project: Path):
    return run_config(project)


@pytest.fixture(scope="module")
def client(config) -> TestClient:
    return TestClient(create_app(config), base_url=LOCAL)


@pytest.fixture(scope="module")
def plain(config):
    """The default ranking as the score table gives it: object ids best first."""
    return ranked(pd.read_parquet(config.layout.scores.table("pixels")), HEADLINE).object_id.tolist()


def ids_of(page: dict) -> list[int]:
    return [int(item["object_id"]) for item in page["items"]]


# -- what it shows --------------------------------------------------------------------------------------
def test_the_list_pages_the_default_ranking(client: TestClient, plain: list[int]):
    first = client.get("/api/list", params={"page_size": 20}).json()
    second = client.get("/api/list", params={"page_size": 20, "page": 1}).json()
    assert (first["model"], first["column"], first["total"], first["pages"]) == ("pixels", HEADLINE, 300, 15)
    assert ids_of(first) + ids_of(second) == plain[:40]
    assert [item["rank"] for item in first["items"]][:3] == [1, 2, 3]
    assert first["items"][0]["ranks"] == {"pixels": 1} and not any(item["random"] for item in first["items"])
    assert all(isinstance(item["object_id"], str) for item in first["items"])  # beyond a browser's exact integers


def test_filters_and_jump(client: TestClient, config, plain: list[int]):
    scores = client.get("/api/list", params={"score_min": 1.0, "page_size": 200}).json()["items"]
    assert scores and all(item["score"] >= 1.0 for item in scores)
    catalog = client.get("/api/choices").json()
    assert catalog["redshift"] == "Z" and "SPECTYPE" in catalog["classes"]
    assert list(catalog["rerankers"]) == list(RERANKERS) and catalog["default_reranker"] == DEFAULT_METHOD
    assert all(summary for summary in catalog["rerankers"].values())  # the menu says what each one does
    kind = catalog["classes"]["SPECTYPE"][0]
    of_kind = client.get("/api/list", params={"cls": f"SPECTYPE={kind}", "page_size": 200}).json()
    by_z = client.get("/api/list", params={"z_min": 0.2, "z_max": 0.4, "page_size": 200}).json()
    assert 0 < of_kind["total"] < 300 and 0 < by_z["total"] < 300
    found = client.get("/api/list", params={"find": plain[45], "page_size": 20}).json()
    assert found["page"] == 2 and plain[45] in ids_of(found)


def test_object_view_has_every_score_and_its_neighbours(client: TestClient, config, plain: list[int]):
    view = client.get(f"/api/object/{plain[0]}").json()
    scores = {row["column"]: row for row in view["scores"]["pixels"]}
    assert scores[HEADLINE]["rank"] == 1 and scores[HEADLINE]["pct"] == 1.0
    assert {"score_image_flow", "score_spectrum_knn", "mismatch"} <= set(scores)
    assert view["has_image"] and view["has_spectrum"] and "SPECTYPE" in view["catalog"]
    neighbours = client.get(f"/api/object/{plain[0]}/neighbours").json()["pixels"]
    assert set(neighbours) == {"image", "spectrum", "joint"}
    k = config.analyze.similarity.k
    assert all(len(found) == k and str(plain[0]) not in {n["object_id"] for n in found} for found in neighbours.values())


def test_the_object_page_holds_its_first_screen_and_names_its_files_by_content(client: TestClient, plain: list[int]):
    """The panels and the spectrum are in the page the server sends, at the settings the draw-ahead
    draws (the browser asks for them before any script runs, and from the response's Link header
    before it reads the page); static files named with their
    content's hash are kept by the browser for good."""
    import html
    import re

    from fmb.app.render import FIRST_SPECTRUM

    page = client.get(f"/object/{plain[5]}")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    sources = [html.unescape(source) for source in re.findall(r'<img (?:id="spectrum" )?src="([^"]+)"', page.text)]
    contrast = "stretch=asinh&low=1&high=99.5"  # Contrast()'s defaults, as the page's controls say them
    assert sources == [f"/img/{plain[5]}/rgb.png?{contrast}",
                       *(f"/img/{plain[5]}/band/{band}.png?{contrast}" for band in range(4)),
                       f"/img/{plain[5]}/spectrum.png?frame={FIRST_SPECTRUM[0]}&smooth={FIRST_SPECTRUM[1]:g}"]
    for source in sources:
        answer = client.get(source)
        assert answer.status_code == 200 and answer.content.startswith(PNG), source
    # the same URLs preloaded from the headers (a URL that differs from its <img> would be fetched twice)
    assert re.findall(r"<([^>]+)>; rel=preload; as=image", page.headers["link"]) == sources
    scripts = re.findall(r'src="(/static/[a-z]+\.js\?v=[0-9a-f]+)"', page.text)
    assert len(scripts) == 2
    assert client.get(scripts[0]).headers["cache-control"] == "public, max-age=31536000, immutable"
    for unversioned in (scripts[0].split("?")[0], scripts[0].split("?")[0] + "?v=stale"):
        assert client.get(unversioned).headers["cache-control"] == "no-cache"


def test_images_are_drawn_once_then_cached(client: TestClient, config, plain: list[int]):
    urls = [f"/img/{plain[1]}/thumbnail.png", f"/img/{plain[1]}/rgb.png?stretch=log&low=2&high=98",
            f"/img/{plain[1]}/band/3.png?stretch=linear", f"/img/{plain[1]}/spectrum.png?frame=observed&smooth=4",
            f"/img/{plain[1]}/spectrum.png?frame=rest", f"/img/{plain[1]}/spectrum.png?frame=observed&low=6000&high=6500",
            f"/img/{plain[1]}/figure.png"]
    first = {}
    for url in urls:
        response = client.get(url)
        assert response.status_code == 200 and response.content.startswith(PNG), url
        first[url] = response.content
    assert first[urls[3]] != first[urls[5]]  # a wavelength range is another image
    cached = {path: path.stat().st_mtime_ns for path in config.layout.app.cache.iterdir()}
    assert {client.get(url).content for url in urls} <= {path.read_bytes() for path in cached}
    now = {path: path.stat().st_mtime_ns for path in config.layout.app.cache.iterdir()}
    assert {path: now[path] for path in cached} == cached  # read back, never drawn again (draw-ahead may add)
    for bad in ("low=5200&high=4000", "low=-1", "frame=sideways", "smooth=99"):
        answer = client.get(f"/img/{plain[1]}/spectrum.png?{bad}")
        assert answer.status_code == 400 and "error" in answer.json(), bad


def test_the_discovery_curve_is_drawn_only_when_it_says_something(scored_run: Path, tmp_path: Path, plain: list[int]):
    """Before any object is labelled 4 or 5 both lines are flat at zero: the list says so instead."""
    project = private_copy(scored_run, tmp_path / "project", run_config(scored_run).layout.app.dir)
    client = TestClient(create_app(run_config(project)), base_url=LOCAL)
    assert client.get("/api/list").json()["discovery"] is False
    assert client.get("/img/discovery.png").status_code == 404
    client.post("/api/labels", json={"object_id": plain[40], "interest": 3, "user": "curve"})
    assert client.get("/api/list").json()["discovery"] is False
    client.post("/api/labels", json={"object_id": plain[41], "interest": 5, "user": "curve"})
    assert client.get("/api/list").json()["discovery"] is True
    assert client.get("/img/discovery.png").content.startswith(PNG)


def test_an_object_carries_its_sky_position_and_links(client: TestClient, plain: list[int]):
    sky = client.get(f"/api/object/{plain[0]}").json()["sky"]
    assert 0 <= sky["ra"] < 360 and abs(sky["dec"] + 28.09) <= 1.5  # the synthetic survey's footprint
    assert set(sky["links"]) == {"ESASky", "Legacy Surveys", "SIMBAD", "NED"}
    assert f"ra={sky['ra']:.6f}" in sky["links"]["Legacy Surveys"] and ":" in sky["sexagesimal"]


def test_labels_round_trip_and_undo(client: TestClient, config, plain: list[int]):
    body = {"object_id": str(plain[2]), "interest": 4, "tags": ["lens", "lens", "merger"], "user": "tester",
            "ranking": f"pixels:{HEADLINE}", "rank": 3}
    saved = client.post("/api/labels", json=body)
    assert saved.status_code == 201 and saved.json()["event"] >= 1
    state = saved.json()["label"]  # read back from the log: what the page confirms
    assert saved.json()["object_id"] == str(plain[2]) and state["event"] == saved.json()["event"]
    assert (state["interest"], state["tags"], state["note"], state["user"]) == (4, ["lens", "merger"], "", "tester")
    shown = client.get("/api/list", params={"tag": "lens"}).json()
    assert ids_of(shown) == [plain[2]] and shown["items"][0]["label"]["interest"] == 4
    assert client.get(f"/api/object/{plain[2]}").json()["label"]["tags"] == ["lens", "merger"]
    assert client.get("/api/list", params={"labelled": "yes"}).json()["total"] == 1
    assert client.get("/api/list", params={"min_interest": 5}).json()["total"] == 0
    undone = client.post("/api/undo", json={"user": "tester"}).json()
    assert undone["object_id"] == str(plain[2]) and undone["label"] is None
    relabelled = client.post("/api/labels", json={**body, "interest": 1}).json()
    client.post("/api/labels", json={**body, "interest": 2, "tags": []})
    undone = client.post("/api/undo", json={"user": "tester"}).json()  # the earlier label is in effect again
    assert undone["label"]["interest"] == 1 and undone["label"]["event"] == relabelled["event"]
    assert client.post("/api/undo", json={"user": "tester"}).json()["label"] is None
    assert client.post("/api/undo", json={"user": "tester"}).json()["event"] is None
    assert LabelStore(config.layout.app.labels_db).events().kind.tolist() == ["label", "undo", "label", "label", "undo",
                                                                              "undo"]


def test_rerank_changes_the_order_and_marks_the_random_slice(client: TestClient, plain: list[int]):
    for object_id in plain[:6]:  # the top of the plain ranking is dull
        assert client.post("/api/labels", json={"object_id": object_id, "interest": 0, "user": "rerank"}).status_code == 201
    assert client.post("/api/rerank", json={"method": "astronomaly"}).json()["labelled"] >= 6
    page = client.get("/api/list", params={"rerank": "astronomaly", "page_size": 20}).json()
    chosen = [int(item["object_id"]) for item in page["items"] if not item["random"]]
    assert page["ranking"] == f"pixels:{HEADLINE}:rerank=astronomaly"
    assert sum(item["random"] for item in page["items"]) == 2 and chosen != plain[:18]
    assert not set(plain[:6]) & set(chosen[:6])
    assert page["pages"] == -(-300 // 18)  # 18 of the ranking a page, 2 drawn from below it
    found = client.get("/api/list", params={"rerank": "astronomaly", "page_size": 20, "find": chosen[17]}).json()
    assert found["page"] == 0


def test_the_last_rerank_is_saved_and_shown_after_a_restart(client: TestClient, config, plain: list[int]):
    from fmb.app.rerank import read_reranked, rerank_run

    for object_id in plain[6:9]:
        client.post("/api/labels", json={"object_id": object_id, "interest": 5, "user": "restart"})
    done = client.post("/api/rerank", json={"method": "propagation"}).json()["rerank"]
    events = LabelStore(config.layout.app.labels_db).events()
    assert done["event"] == events.id.max() and done["method"] == "propagation" and done["labels"] >= 3
    saved = config.layout.app.reranked(ranking_name("pixels", HEADLINE, "propagation"))
    assert read_reranked(saved).describe() == done
    assert list(config.layout.app.graph("x").parent.glob("knn-*.npz"))  # the graph it learnt on, kept
    shown = client.get("/api/list", params={"rerank": "propagation", "page_size": 10}).json()
    client.post("/api/labels", json={"object_id": plain[9], "interest": 5, "user": "restart"})  # after the re-rank
    restarted = TestClient(create_app(config), base_url=LOCAL)  # a new process: nothing in memory
    again = restarted.get("/api/list", params={"rerank": "propagation", "page_size": 10}).json()
    assert again["rerank"] == done and ids_of(again) == ids_of(shown)  # the last re-rank, not a new one
    rerank_run(config, method="propagation")  # `fmb rerank` writes the file the app shows
    by_cli = read_reranked(saved).describe()
    assert by_cli["event"] == events.id.max() + 1 and by_cli["time"] > done["time"]
    assert TestClient(create_app(config), base_url=LOCAL).get(
        "/api/list", params={"rerank": "propagation"}).json()["rerank"] == by_cli
    table = config.layout.scores.table("pixels")  # scores changed since: the saved list is stale, made anew
    original = table.read_bytes()
    frame = pd.read_parquet(table)
    try:
        frame.assign(**{HEADLINE: -frame[HEADLINE]}).to_parquet(table)
        fresh = TestClient(create_app(config), base_url=LOCAL).get(
            "/api/list", params={"rerank": "propagation"}).json()["rerank"]
        assert fresh["time"] > by_cli["time"] and fresh["source"] != by_cli["source"]
    finally:
        table.write_bytes(original)


def test_the_consensus_is_one_more_ranking(config, plain: list[int]):
    """With several models, `fmb detect` writes a cross-model consensus: the list offers it as a model."""
    consensus = config.layout.scores.consensus
    scores = pd.read_parquet(config.layout.scores.table("pixels"), columns=["object_id", HEADLINE])
    scores.rename(columns={HEADLINE: "fused_consensus"}).to_parquet(consensus)
    try:
        client = TestClient(create_app(config), base_url=LOCAL)
        page = client.get("/api/list", params={"model": "consensus", "page_size": 5}).json()
        assert (page["column"], ids_of(page)) == ("fused_consensus", plain[:5])
        assert page["items"][0]["ranks"] == {"pixels": 1, "consensus": 1}
        assert client.post("/api/rerank", json={"model": "consensus", "method": "astronomaly"}).status_code == 400
    finally:
        consensus.unlink()


def test_scores_rewritten_while_the_app_runs_are_read_again(scored_run: Path, tmp_path: Path):
    """`fmb detect --method knn` while the app ran: it served the columns of before (their ranks gone
    from disk) and failed to re-rank on them."""
    config = run_config(private_copy(scored_run, tmp_path / "project", run_config(scored_run).layout.app.dir))
    client = TestClient(create_app(config), base_url=LOCAL)
    assert "score_image_flow" in client.get("/api/choices").json()["models"]["pixels"]["columns"]
    path = config.layout.scores.table("pixels")
    table = pd.read_parquet(path)
    kept = [column for column in table.columns if "flow" not in column]
    table[kept].to_parquet(path)  # as a detect without the flow would write it
    columns = client.get("/api/choices").json()["models"]["pixels"]["columns"]
    assert "score_image_flow" not in columns and HEADLINE in columns
    assert client.get("/api/list", params={"column": "score_image_flow"}).status_code in (400, 404)
    assert client.post("/api/rerank", json={"method": "propagation"}).status_code == 200
    before = client.get("/api/list", params={"rerank": "propagation", "page_size": 5}).json()["rerank"]["source"]
    table[kept].assign(**{HEADLINE: -table[HEADLINE]}).to_parquet(path)  # the ranking itself changes
    after = client.get("/api/list", params={"rerank": "propagation", "page_size": 5}).json()["rerank"]["source"]
    assert after != before  # a re-ranked list of the old scores is not served on the new ones
    path.write_bytes(path.read_bytes()[:100])  # caught mid-rewrite: what was read is kept
    assert client.get("/api/choices").status_code == 200


# -- what it refuses ------------------------------------------------------------------------------------
BAD_IDS = ["abc", "1.5", "1e3", "0x10", "99999999999999999999", "-99999999999999999999", "%00", "%20", "1;2"]


@pytest.mark.parametrize("bad", BAD_IDS)
@pytest.mark.parametrize("route", ["/object/{}", "/api/object/{}", "/api/object/{}/neighbours", "/img/{}/thumbnail.png",
                                   "/img/{}/band/0.png", "/img/{}/spectrum.png"])
def test_malformed_ids_are_400(client: TestClient, route: str, bad: str):
    response = client.get(route.format(bad))
    assert response.status_code in (400, 404) and "error" in response.json(), response.text


@pytest.mark.parametrize("unknown", ["0", "-1", "5", str(2**63 - 1), str(-(2**63))])
def test_unknown_ids_are_404(client: TestClient, unknown: str):
    for route in ("/object/{}", "/api/object/{}", "/img/{}/rgb.png"):
        response = client.get(route.format(unknown))
        assert response.status_code == 404 and "no object" in response.json()["error"]
    refused = client.post("/api/labels", json={"object_id": unknown, "interest": 3})
    assert refused.status_code == 404


@pytest.mark.parametrize("query", [{"page": 10**9}, {"page": 10**30}, {"page": -1}, {"page_size": 0},
                                   {"page_size": 10**6}, {"find": "x"}, {"score_min": "nan"}, {"model": "x" * 500},
                                   {"model": "../../etc"}, {"column": "object_id"}, {"cls": "Z=1"}, {"rerank": "nope"}])
def test_bad_list_queries_are_4xx(client: TestClient, query: dict):
    response = client.get("/api/list", params=query)
    assert 400 <= response.status_code < 500 and "error" in response.json()


@pytest.mark.parametrize("body", [{"object_id": 1.5, "interest": 1}, {"object_id": "x"}, {"interest": 2},
                                  {"object_id": 2**64, "interest": 1}])
def test_bad_labels_are_400(client: TestClient, body: dict):
    assert client.post("/api/labels", json=body).status_code == 400


def test_bad_label_content_is_400(client: TestClient, plain: list[int]):
    for body in ({"interest": 6}, {"interest": 2, "tags": ["no spaces"]}, {"interest": 2, "user": "a b"}, {}):
        response = client.post("/api/labels", json={"object_id": plain[3], **body})
        assert response.status_code == 400 and "error" in response.json()
    # a 17-digit id as a JSON float names another object (2^53 < id): refused, where its digits are taken
    response = client.post("/api/labels", json={"object_id": float(plain[3]), "interest": 2})
    assert response.status_code == 400 and "floating-point" in response.json()["error"]
    assert client.post("/api/labels", json={"object_id": str(plain[3]), "interest": 2}).status_code == 201


def test_writes_take_json_only(client: TestClient, config, plain: list[int]):
    """A page of another origin can post a form or text without asking; JSON it cannot."""
    before = len(LabelStore(config.layout.app.labels_db).events())
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data"):
        response = client.post("/api/labels", content=f'{{"object_id": {plain[4]}, "interest": 5}}',
                               headers={"Content-Type": content_type})
        assert 400 <= response.status_code < 500
    assert len(LabelStore(config.layout.app.labels_db).events()) == before


def test_only_the_packaged_static_files_are_served(client: TestClient):
    assert client.get("/static/app.css").status_code == 200
    for name in ("server.py", "__init__.py", "labels.sqlite", "%2e%2e", "render.py"):
        assert client.get(f"/static/{name}").status_code == 404


TRAVERSALS = ["/static/../../etc/passwd", "/static/%2e%2e/%2e%2e/etc/passwd", "/static/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
              "/static/..%2f..%2f..%2f..%2f..%2f..%2fetc%2fpasswd", "/static//etc/passwd", "/static/%2fetc%2fpasswd",
              "/etc/passwd", "//etc/passwd", "/static/..%5c..%5cetc%5cpasswd", "/object/..%2f..%2fetc%2fpasswd",
              "/img/..%2f..%2fetc%2fpasswd/thumbnail.png", "/static/%252e%252e%252fetc%252fpasswd",
              "/static/..%2fapp%2flabels.sqlite", "/static/..%2f..%2f..%2fpyproject.toml", "http://127.0.0.1/etc/passwd",
              "/static/%c0%ae%c0%ae/etc/passwd", "/static/app.css%00.py", "/api/list?model=..%2f..%2fetc%2fpasswd"]


def test_path_traversal_never_reaches_a_file(project: Path, config):
    """Against real uvicorn, which decodes percent escapes before routing: each path as sent."""
    LabelStore(config.layout.app.labels_db)  # exists: a traversal that reached it would read "SQLite format"
    with LiveServer(project) as server:
        for path in TRAVERSALS:
            status, body = raw_get(server.port, path)
            assert 400 <= status < 500, (path, status)
            assert b"root:" not in body and b"SQLite format" not in body and b"[project]" not in body, path


def test_a_foreign_host_is_refused_without_a_token(client: TestClient):
    """DNS rebinding: a page of evil.example resolving its own name to 127.0.0.1 reaches a local app
    with Host: evil.example; the app answers no such request."""
    assert client.get("/api/choices", headers={"Host": "evil.example"}).status_code == 400
    assert client.get("/api/choices", headers={"Host": "localhost:8765"}).status_code == 200


def test_a_token_guards_every_request(config, plain: list[int]):
    guarded = TestClient(create_app(config, token="s3cret-token"), base_url="http://192.0.2.7")
    for url in ("/", "/api/choices", f"/img/{plain[0]}/thumbnail.png", "/static/app.css", "/nowhere"):
        assert guarded.get(url).status_code == 401, url
    assert guarded.get("/api/choices", headers={"X-Fmb-Token": "wrong"}).status_code == 401
    assert guarded.get("/api/choices", headers={"X-Fmb-Token": "s3cret-token"}).status_code == 200
    assert guarded.post("/api/labels", json={"object_id": plain[0], "interest": 1}).status_code == 401
    opened = guarded.get("/?token=s3cret-token")
    assert opened.status_code == 200 and "httponly" in opened.headers["set-cookie"].lower()
    assert guarded.get("/api/choices").status_code == 200  # the cookie carries it from now on


def test_serve_binds_beyond_loopback_only_with_a_token(config, monkeypatch):
    import uvicorn

    bound = []
    monkeypatch.setattr(uvicorn, "run", lambda app, host, port, **options: bound.append((host, port)))
    for host in ("0.0.0.0", "192.0.2.7", "::", "example.org"):
        with pytest.raises(FmbError, match="token"):
            serve(config, host=host)
    serve(config, host="0.0.0.0", port=9999, token="s3cret-token")
    serve(config)
    assert bound == [("0.0.0.0", 9999), ("127.0.0.1", 8765)]
    assert is_loopback("127.0.0.5") and is_loopback("::1") and is_loopback("localhost") and not is_loopback("10.0.0.1")


# -- issue 27: every error JSON, bodies capped, framing and foreign scripts refused ----------------------
def test_every_answer_forbids_framing_and_foreign_content(client: TestClient):
    for response in (client.get("/"), client.get("/api/object/0"), client.get("/api/choices", headers={"Host": "x.example"}),
                     client.post("/api/labels", content=b"x" * (MAX_BODY_BYTES + 1),
                                 headers={"Content-Type": "application/json"})):
        assert response.headers["x-frame-options"] == "DENY"
        policy = response.headers["content-security-policy"]
        assert "default-src 'self'" in policy and "frame-ancestors 'none'" in policy and "unsafe" not in policy


def test_a_body_over_the_cap_is_refused_before_it_is_read(project: Path, plain: list[int]):
    """Against real uvicorn: a declared 200 MB body is answered 413 at once, without sending it; a
    chunked body (no length) is cut off once past the cap."""
    with LiveServer(project) as server:
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        connection.putrequest("POST", "/api/labels")
        connection.putheader("Content-Type", "application/json")
        connection.putheader("Content-Length", str(200 * 2**20))
        connection.endheaders()  # and no body at all: the answer must not wait for it
        answer = connection.getresponse()
        assert answer.status == 413 and "over" in json.loads(answer.read())["error"]
        connection.close()

        def chunks():
            yield b'{"object_id": ' + str(plain[0]).encode() + b', "note": "'
            for _ in range(64):
                yield b"x" * 4096
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        connection.request("POST", "/api/labels", body=chunks(), headers={"Content-Type": "application/json"},
                           encode_chunked=True)
        answer = connection.getresponse()
        assert answer.status == 413 and "error" in json.loads(answer.read())


def test_a_damaged_similarity_index_is_rebuilt_not_a_500(config, plain: list[int]):
    """Issue 27: a corrupt ids.npy or meta.json made every neighbours request a plain-text 500."""
    from fmb.embed.store import read_manifest
    from fmb.layout import SimilarityFiles

    first = TestClient(create_app(config), base_url=LOCAL).get(f"/api/object/{plain[0]}/neighbours").json()
    modalities = read_manifest(config.layout.embeddings("pixels").manifest)["signature"]["dims"]
    for damage in ("ids", "meta"):
        for modality in modalities:
            index_file, ids_file, meta_file = SimilarityFiles.index_files(config.layout.similarity.index_dir("pixels", modality))
            if damage == "ids":
                ids_file.write_bytes(b"\x93NUMPY garbage, not an array")
            else:
                meta_file.write_text('{"ids_sha256": ')
        answer = TestClient(create_app(config), base_url=LOCAL).get(f"/api/object/{plain[0]}/neighbours")
        assert answer.status_code == 200 and answer.json() == first, damage
