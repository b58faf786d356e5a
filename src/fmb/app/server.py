"""The discovery app's web server (`fmb app`): one run's ranked objects, their views, and labelling.

`create_app` builds the FastAPI application over one run directory; `serve` runs it with uvicorn.
This module is the HTTP side only: what the app shows and records is `fmb.app.view.RunView`, which
raises fmb errors that the handlers here turn into JSON 4xx answers.
Pages are plain HTML and JavaScript from the package's static directory (the object page rendered
with its first screen's images in it, `fmb.app.object_page`); every image is drawn here
(`fmb.app.render`) and every list is computed here, so the browser holds no state but the page it shows.
Who may ask and what every answer carries is `fmb.app.access` (ASGI middleware).

What a request can reach, and nothing else:

* object ids are 64-bit integers, checked before use; an id the run does not hold is a 404;
* no request names a file: static files are a fixed set listed when the app starts, images are
  drawn from the data index and cached under names hashed from the request, lists come from the
  run's score tables; the app writes label events (`fmb.app.labels`) and its image cache under the
  run's app directory, each re-ranked list (the file `fmb rerank` writes, so a restart shows the last
  one) and the nearest-neighbour graph it learns on, and a similarity index the run lacks where
  `fmb analyze similarity` puts it;
* every error is a JSON ``{"error": ...}`` with a 4xx status (a 500 is a bug, and is JSON too);
  request bodies are capped (`fmb.app.access.MAX_BODY_BYTES`) before they are read;
* every response forbids framing (``X-Frame-Options: DENY``) and carries a restrictive
  Content-Security-Policy: the app's own scripts, styles and images only, nothing inline, no
  connection anywhere but the app (the sky-viewer links are plain links, opened by the user);
* object ids go out as JSON strings: survey ids (DESI's TARGETID ~ 4e16) exceed the integers a
  browser holds exactly (2^53); they come back as strings or numbers, both read as 64-bit integers;
* bound to the loopback interface (the default), only requests naming a loopback host are answered
  (a web page elsewhere cannot reach the app by rebinding its own domain to 127.0.0.1); writes take
  JSON only, which a page of another origin cannot send without the app's consent;
* with a token, every request must carry it (the ``X-Fmb-Token`` header, or a cookie set by opening
  any page once with ``?token=...``); `serve` refuses to bind anything but loopback without one.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Literal

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi import Path as PathParameter
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, Response
from pydantic import BaseModel, Field, field_validator, model_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from fmb.app.access import BodyLimit, Guard, error_response, is_loopback
from fmb.app.export import EXPORT_FORMATS, TOP_DEFAULT, TOP_MAX
from fmb.app.labels import MAX_INTEREST, MAX_NOTE, MAX_RANKING
from fmb.app.tables import NotFound
from fmb.app.object_page import ObjectPage, static_version
from fmb.app.view import INT64_MAX, INT64_MIN, ListQuery, RunView
from fmb.config import ResolvedConfig
from fmb.data.schema import BAND_NAMES
from fmb.errors import FmbError
from fmb.viz.spectrum import FRAMES
from fmb.viz.stretch import STRETCHES, Contrast

ObjectId = Annotated[int, PathParameter(ge=INT64_MIN, le=INT64_MAX, description="a 64-bit object id")]
STATIC_DIR = Path(__file__).with_name("static")
LIST_PAGE = "index.html"
MEDIA_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".png": "image/png",
               ".svg": "image/svg+xml"}
log = logging.getLogger("fmb.app")


# -- requests --------------------------------------------------------------------------------------------
class LabelRequest(BaseModel):
    object_id: int = Field(ge=INT64_MIN, le=INT64_MAX)
    interest: int | None = Field(None, ge=0, le=MAX_INTEREST)
    tags: list[str] = Field([], max_length=64)
    note: str = Field("", max_length=MAX_NOTE)
    user: str = Field("anonymous", max_length=64)
    ranking: str | None = Field(None, max_length=MAX_RANKING)
    rank: int | None = Field(None, ge=1, le=INT64_MAX)

    @field_validator("object_id", mode="before")
    @classmethod
    def _exact_id(cls, value):
        """A JSON float would be taken when whole, and 3.9627007000000659e16 is the id ...656: another object."""
        if isinstance(value, float):
            raise ValueError("an object id is an integer or its digits as a string, not a floating-point number "
                             "(which rounds 17-digit ids to another object's)")
        return value


class UndoRequest(BaseModel):
    user: str = Field("anonymous", max_length=64)


class RerankRequest(BaseModel):
    model: str | None = Field(None, max_length=100)
    column: str | None = Field(None, max_length=100)
    method: str = Field(max_length=100)


class ExportQuery(BaseModel):
    """Which objects leave: every labelled one and the `top` of a ranking."""

    model: str | None = Field(None, max_length=100)
    column: str | None = Field(None, max_length=100)
    top: int = Field(TOP_DEFAULT, ge=0, le=TOP_MAX)


class ContrastQuery(BaseModel):
    stretch: Literal[STRETCHES] = "asinh"
    low: float = Field(1.0, ge=0, le=100)
    high: float = Field(99.5, ge=0, le=100)

    def contrast(self) -> Contrast:
        return Contrast(self.stretch, self.low, self.high)  # FmbError (400) unless low < high


class SpectrumQuery(BaseModel):
    frame: Literal[FRAMES] = "rest"
    smooth: float = Field(2.0, ge=0, le=50)
    low: float | None = Field(None, ge=0, le=1e6, description="the shown range's start (A, in the frame asked)")
    high: float | None = Field(None, ge=0, le=1e6)

    @model_validator(mode="after")
    def _ordered(self) -> "SpectrumQuery":
        if self.low is not None and self.high is not None and not self.low < self.high:
            raise ValueError(f"a wavelength range needs low < high, got {self.low:g} and {self.high:g}")
        return self


# -- responses -------------------------------------------------------------------------------------------
def png_response(data: bytes) -> Response:
    return Response(data, media_type="image/png", headers={"Cache-Control": "private, max-age=600"})


def static_files() -> dict[str, Path]:
    """The files the app serves, by name: listed once, so no request ever names a path."""
    return {path.name: path for path in STATIC_DIR.iterdir() if path.is_file() and path.suffix in MEDIA_TYPES}


def validation_message(error: RequestValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(part) for part in first.get("loc", ())[1:]) or "request"
    return f"{where}: {first.get('msg', 'invalid')}"


def handle_errors(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError):
        return error_response(400, validation_message(error))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException):
        return error_response(error.status_code, str(error.detail))

    @app.exception_handler(NotFound)
    async def not_found(request: Request, error: NotFound):
        return error_response(404, str(error))

    @app.exception_handler(FmbError)
    async def refused(request: Request, error: FmbError):  # a label the store refuses, a bad contrast
        return error_response(400, str(error))

    @app.exception_handler(Exception)
    async def bug(request: Request, error: Exception):  # a bug: logged with its traceback, still JSON
        log.error("unexpected error on %s", request.url.path, exc_info=error)
        return error_response(500, f"unexpected {type(error).__name__}: please report it (the app's log has the "
                                   "traceback)")




# -- the application -------------------------------------------------------------------------------------
def create_app(config: ResolvedConfig, token: str | None = None) -> FastAPI:
    """The app over `config`'s run; with `token`, every request must carry it."""
    view = RunView(config)
    files = static_files()
    version = static_version(files)
    object_page_html = ObjectPage(version)
    app = FastAPI(title=f"fmb discovery: {config.name}", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(Guard, token=token)
    app.add_middleware(BodyLimit)
    handle_errors(app)

    def static(name: str, v: Annotated[str | None, Query(max_length=64)] = None) -> FileResponse:
        """A static file; asked for with its content's hash (``?v=``, as the object page names them), kept for good."""
        if name not in files:
            raise HTTPException(404, "no such file")
        return FileResponse(files[name], media_type=MEDIA_TYPES[files[name].suffix],
                            headers={"Cache-Control": "public, max-age=31536000, immutable" if v == version else "no-cache"})

    app.get("/")(lambda: static(LIST_PAGE))
    app.get("/static/{name}")(static)

    @app.get("/object/{object_id}")
    def object_page(object_id: ObjectId):
        """The object page with its first screen's images in it (`fmb.app.object_page`)."""
        object_id = view.require(object_id)
        return HTMLResponse(object_page_html.render(object_id), headers={
            "Cache-Control": "no-cache", "Link": object_page_html.preload_header(object_id)})

    @app.get("/api/choices")
    def choices():
        return view.choices()

    @app.get("/api/list")
    def ranked_list(query: Annotated[ListQuery, Query()]):
        return view.page(query)

    @app.get("/api/object/{object_id}")
    def one_object(object_id: ObjectId):
        return view.object(object_id)

    @app.get("/api/object/{object_id}/neighbours")
    def neighbours(object_id: ObjectId):
        return view.neighbours.of(view.require(object_id))

    @app.post("/api/labels", status_code=201)
    def add_label(request: LabelRequest):
        return view.add_label(request.object_id, request.interest, request.tags, request.note, request.user,
                              request.ranking, request.rank)

    @app.post("/api/undo")
    def undo(request: UndoRequest):
        return view.undo(request.user)

    @app.post("/api/rerank")
    def rerank(request: RerankRequest):
        return view.rerank(request.model, request.column, request.method)

    add_export_routes(app, view)
    add_image_routes(app, view)
    return app


def add_export_routes(app: FastAPI, view: RunView) -> None:
    @app.get("/api/export.{suffix}")
    def download(suffix: Literal[tuple(EXPORT_FORMATS)], query: Annotated[ExportQuery, Query()]):
        """The labelled objects and the top of a ranking as a file to keep (FITS, VOTable or CSV)."""
        data, name = view.export(suffix, query.model, query.column, query.top)
        return Response(data, media_type=EXPORT_FORMATS[suffix].media_type,
                        headers={"Content-Disposition": f'attachment; filename="{name}"', "Cache-Control": "no-store"})

    @app.post("/api/samp")
    def samp(query: ExportQuery):
        """The same table sent to every SAMP client listening (TOPCAT, Aladin) through the running hub."""
        return view.send_samp(query.model, query.column, query.top)


def add_image_routes(app: FastAPI, view: RunView) -> None:
    renderer = view.renderer

    @app.get("/img/{object_id}/thumbnail.png")
    def thumbnail(object_id: ObjectId):
        return png_response(view.image(object_id, lambda: renderer.thumbnail(object_id)))

    @app.get("/img/{object_id}/rgb.png")
    def rgb(object_id: ObjectId, contrast: Annotated[ContrastQuery, Query()]):
        shown = contrast.contrast()
        return png_response(view.image(object_id, lambda: renderer.rgb(object_id, shown)))

    @app.get("/img/{object_id}/band/{index}.png")
    def band(object_id: ObjectId, index: Annotated[int, PathParameter(ge=0, lt=len(BAND_NAMES))],
             contrast: Annotated[ContrastQuery, Query()]):
        shown = contrast.contrast()
        return png_response(view.image(object_id, lambda: renderer.band(object_id, index, shown)))

    @app.get("/img/{object_id}/spectrum.png")
    def spectrum(object_id: ObjectId, query: Annotated[SpectrumQuery, Query()]):
        return png_response(view.image(object_id, lambda: renderer.spectrum(
            object_id, query.frame, query.smooth, (query.low, query.high))))

    @app.get("/img/{object_id}/figure.png")
    def figure(object_id: ObjectId):
        return png_response(view.image(object_id, lambda: renderer.figure(object_id)))

    @app.get("/img/discovery.png")
    def discovery(model: Annotated[str | None, Query(max_length=100)] = None,
                  column: Annotated[str | None, Query(max_length=100)] = None):
        return Response(view.discovery(model, column), media_type="image/png", headers={"Cache-Control": "no-store"})


def _check_free(host: str, port: int) -> None:
    """Fail in one line when the port is taken (another app, a second `fmb app`), before the page is
    announced: uvicorn would say so only after the address was printed as ready."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: a closed app's port is free
        try:
            probe.bind((host, port))
        except OSError as error:
            raise FmbError(f"cannot listen on {host}:{port} ({error.strerror}): another program (another "
                           "`fmb app`?) holds it; choose another port with --port") from None


def serve(config: ResolvedConfig, host: str = "127.0.0.1", port: int = 8765, token: str | None = None,
          log=print) -> None:
    """Run the app with uvicorn until interrupted; anything but a loopback address needs a token.
    Says, once the run has opened, where the page is, which run it serves and how to stop it."""
    if not is_loopback(host) and not token:
        raise FmbError(f"binding to {host} lets other machines reach the app and its labels: give a token "
                       "(--token), or keep the default 127.0.0.1")
    import uvicorn

    _check_free(host, port)
    app = create_app(config, token)
    address = f"http://{'[' + host + ']' if ':' in host else host}:{port}/" + (f"?token={token}" if token else "")
    log(f"fmb app: run {config.name} ({config.layout.root}) at {address}")
    log("open that address in a browser; press Ctrl+C here to stop the app (labels are saved as you give them)")
    uvicorn.run(app, host=host, port=port, log_level="warning")
