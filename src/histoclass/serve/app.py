"""The FastAPI app for a run: `create_app(run, token=None, limits=Limits())`.

    GET  /          the page (no outside resources): drop images, see label, confidence, bars
    POST /predict   multipart field `files`, one or many images -> PredictResponse
    GET  /model     what the run is (ModelInfo)
    GET  /health    liveness, the one route that needs no token
    GET  /docs      the OpenAPI docs (/openapi.json)

Every prediction goes through the run: `Run.prepare_images` resizes as training did, the
`Batcher` calls `Run.model_probabilities` and `Run.calibrated`, and labels come from
`Run.labels` at the run's threshold: the numbers of `histoclass predict` on the same files.
With a token every route but /health needs `Authorization: Bearer <token>` (a browser may
instead open `/?token=<token>`; the page then sends the header itself).
"""

import logging
import secrets
import threading
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Annotated, Optional
from urllib.parse import quote

import numpy as np
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from .. import CLASS_NAMES, __version__
from ..fileio import read_json
from .batcher import Batcher
from .schemas import FileResult, Health, ModelInfo, PredictResponse, Problem
from .uploads import MalformedBody, clean_filename, decode_uploads, overlay_png_data_uri, read_file_parts

if TYPE_CHECKING:
    from ..inference.run import Run

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Limits:
    """What one request may carry; more is refused with 413 and the reason."""

    max_files: int = 512
    max_file_bytes: int = 20 * 2**20
    max_request_bytes: int = 128 * 2**20
    max_batch: int = 512  # images the batcher gives the model at once
    max_wait_s: float = 0.005  # how long the batcher waits for more requests to join a batch


# The body of POST /predict, for the OpenAPI docs: the route reads it itself (`read_file_parts`).
UPLOAD_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["files"], "properties": {"files": {
        "type": "array", "items": {"type": "string", "format": "binary"},
        "description": "One or more image files."}}}}}}}


class BodyLimit:
    """ASGI middleware: a request body larger than `max_bytes` is refused with 413 before it is
    read (by Content-Length) or as soon as it passes the limit (a chunked upload)."""

    class _TooLarge(Exception):
        pass

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        reason = (f"the request body is larger than the limit of {self.max_bytes:,} bytes; "
                  "send fewer or smaller images per request")
        length = dict(scope.get("headers", [])).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await JSONResponse({"detail": reason}, status_code=413)(scope, receive, send)
        received, started = 0, False

        async def counted_receive():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise BodyLimit._TooLarge()
            return message

        async def watched_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, watched_send)
        except BodyLimit._TooLarge:
            if not started:
                await JSONResponse({"detail": reason}, status_code=413)(scope, receive, send)


def create_app(run: "Run", token: str | None = None, limits: Limits = Limits()) -> FastAPI:
    """The app for `run`. `token`: when given, every route but /health needs it."""
    batcher_holder: dict[str, Batcher] = {}
    gradcam_lock = threading.Lock()  # one Grad-CAM at a time: it builds a gradient model each call
    page = resources.files(__package__).joinpath("page.html").read_text(encoding="utf-8")

    def batcher() -> Batcher:
        if "batcher" not in batcher_holder:
            batcher_holder["batcher"] = Batcher(run, max_batch=limits.max_batch, max_wait_s=limits.max_wait_s)
            app.state.batcher = batcher_holder["batcher"]  # for inspection: model_calls
        return batcher_holder["batcher"]

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher()
        yield
        batcher_holder.pop("batcher").close()

    app = FastAPI(title="histoclass", version=__version__, lifespan=lifespan,
                  docs_url=None, redoc_url=None, openapi_url=None,
                  description=f"Benign/malignant predictions of the run in {run.folder.name} "
                              f"({run.config.model}).")
    app.add_middleware(BodyLimit, max_bytes=limits.max_request_bytes)
    bearer = HTTPBearer(auto_error=False, description="The token given to `histoclass serve --token`.")

    def authorised(credentials: Annotated[Optional[HTTPAuthorizationCredentials], Depends(bearer)],
                   query_token: Annotated[Optional[str], Query(alias="token", include_in_schema=False)] = None) -> None:
        if token is None:
            return
        given = credentials.credentials if credentials is not None else query_token
        if given is None or not secrets.compare_digest(given.encode(), token.encode()):
            raise HTTPException(401, "a valid token is needed: send the header 'Authorization: Bearer <token>'",
                                headers={"WWW-Authenticate": "Bearer"})

    async def checked_uploads(request: Request) -> list[tuple[str, bytes]]:
        """(name for display, bytes) of each file of field `files`, within the limits."""
        try:
            parts = await read_file_parts(request.headers.get("content-type", ""), request.stream(), "files",
                                          limits.max_files, limits.max_file_bytes)
        except MalformedBody as err:
            raise HTTPException(400, str(err)) from None
        if parts is None or not parts.count:  # as FastAPI says of a missing field
            raise RequestValidationError([{"type": "missing", "loc": ("body", "files"), "msg": "Field required",
                                           "input": None}])
        if parts.count > limits.max_files:
            raise HTTPException(413, f"{parts.count} files in one request, more than the limit of "
                                     f"{limits.max_files}; split them over several requests")
        if parts.largest is not None:
            name, size = parts.largest
            raise HTTPException(413, f"file {clean_filename(name, 0)!r} has {size:,} "
                                     f"bytes, more than the limit of {limits.max_file_bytes:,}")
        return [(clean_filename(name, i), data) for i, (name, data) in enumerate(parts.files)]

    secured = [Depends(authorised)]
    unauthorised = {401: {"model": Problem, "description": "No or wrong token"}}
    problems = {**unauthorised, 400: {"model": Problem, "description": "A body that is not multipart/form-data"},
                413: {"model": Problem, "description": "Too many or too large files"}}

    @app.get("/health", response_model=Health, tags=["service"])
    def health() -> Health:
        """Whether the service is up (no token needed)."""
        return Health(model_calls=batcher().model_calls)

    @app.get("/", response_class=HTMLResponse, dependencies=secured, include_in_schema=False)
    def index() -> HTMLResponse:
        return HTMLResponse(page, headers={"Content-Security-Policy":
                                           "default-src 'self'; img-src 'self' data: blob:; "
                                           "style-src 'unsafe-inline'; script-src 'unsafe-inline'"})

    @app.get("/model", response_model=ModelInfo, dependencies=secured, responses=unauthorised, tags=["model"])
    def model_info() -> ModelInfo:
        """What the run is: model, recipe, data, validation metrics, threshold, µm/px."""
        return describe(run)

    @app.post("/predict", response_model=PredictResponse, dependencies=secured, responses=problems,
              tags=["model"], openapi_extra=UPLOAD_BODY)
    async def predict(request: Request,
                      gradcam: Annotated[bool, Query(description="Add each image's Grad-CAM overlay.")] = False
                      ) -> PredictResponse:
        """Calibrated probabilities and labels for uploaded images (multipart field `files`).
        A file that is not a usable image gets a status saying why; the others are answered."""
        contents = await checked_uploads(request)
        uploads, batch = await run_in_threadpool(_decode_all, run, contents)
        usable = [upload for upload in uploads if upload.image is not None]
        prob: dict[int, float] = {}
        overlays: dict[int, str] = {}
        if usable:
            probabilities = await batcher().submit(batch)
            prob = {id(upload): float(p) for upload, p in zip(usable, probabilities)}
            if gradcam:
                images = await run_in_threadpool(_gradcam_overlays, run, batch, gradcam_lock)
                overlays = {id(upload): image for upload, image in zip(usable, images)}
        return PredictResponse(model=run.config.model, threshold=run.threshold,
                               results=[_result(run, upload, prob.get(id(upload)), overlays.get(id(upload)))
                                        for upload in uploads])

    @app.get("/openapi.json", dependencies=secured, include_in_schema=False)
    def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", dependencies=secured, include_in_schema=False)
    def docs(query_token: Annotated[Optional[str], Query(alias="token")] = None) -> HTMLResponse:
        # The docs page fetches /openapi.json itself; it passes on the token it was opened with.
        url = "/openapi.json" + (f"?token={quote(query_token)}" if query_token else "")
        return get_swagger_ui_html(openapi_url=url, title="histoclass API")

    return app


def _decode_all(run: "Run", contents: list[tuple[str, bytes]]):
    """The uploads decoded, and the usable ones as one batch at the model's size (or None)."""
    uploads = decode_uploads(contents, run.image_size)
    usable = [upload.image for upload in uploads if upload.image is not None]
    return uploads, (run.prepare_images(usable)[0] if usable else None)


def _result(run: "Run", upload, prob_malignant: float | None, overlay: str | None) -> FileResult:
    if prob_malignant is None:
        return FileResult(filename=upload.filename, status=upload.status)
    label = int(run.labels(np.array([prob_malignant]))[0])
    prob_benign = 1.0 - prob_malignant
    return FileResult(filename=upload.filename, prob_malignant=prob_malignant, prob_benign=prob_benign,
                      label=CLASS_NAMES[label], confidence=prob_malignant if label else prob_benign,
                      status="ok", gradcam_png=overlay)


def _gradcam_overlays(run: "Run", batch: np.ndarray, lock) -> list[str]:
    """Grad-CAM of the run's model (the first member of an ensemble) for malignancy."""
    from ..explain.gradcam import gradcam_heatmap
    with lock:
        heatmaps = gradcam_heatmap(run.model, batch)
    return [overlay_png_data_uri(image, heatmap) for image, heatmap in zip(batch, heatmaps)]


def describe(run: "Run") -> ModelInfo:
    """The run as /model shows it."""
    validation = None
    path = run.folder / "calibration.json"
    if path.is_file():
        try:
            validation = read_json(path).get("val_metrics")
        except (OSError, ValueError, AttributeError):
            validation = None
    return ModelInfo(
        model=run.config.model, recipe=run.config.recipe,
        engine=getattr(run.engine, "name", "keras"), members=len(run.models),
        image_size=run.image_size, microns_per_pixel=getattr(run.config, "mpp", None),
        test_time_augmentation=run.config.test_time_augmentation, threshold=run.threshold,
        threshold_method=run.calibration.threshold_method, temperature=run.temperature,
        prior_shift=run.prior_shift, class_names=list(CLASS_NAMES), data=run.data,
        validation_metrics=validation, histoclass_version=__version__)


def serve(run: "Run", host: str = "127.0.0.1", port: int = 8000, token: str | None = None,
          limits: Limits = Limits()) -> None:
    """Runs the app with uvicorn until interrupted."""
    import uvicorn
    if host not in ("127.0.0.1", "localhost", "::1") and token is None:
        log.warning("serving on %s without a token: anyone who can reach this machine can use the "
                    "model; give --token (or set HISTOCLASS_TOKEN)", host)
    shown = f"http://{host}:{port}/" + ("?token=<your token>" if token else "")
    log.info("serving %s at %s (API docs at /docs)", run.folder, shown)
    uvicorn.run(create_app(run, token=token, limits=limits), host=host, port=port, log_level="warning")
