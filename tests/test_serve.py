"""`histoclass serve`: every endpoint and error through TestClient, a real uvicorn on loopback,
and the page in headless Chromium."""
import base64
import contextlib
import os
import socket
import struct
import threading
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from conftest import chromium_path, patch, write_png  # noqa: E402
from histoclass.inference.run import load_run  # noqa: E402
from histoclass.serve.app import Limits, create_app  # noqa: E402
from histoclass.serve.batcher import Batcher  # noqa: E402

TOKEN = "test-token-123"


@pytest.fixture(scope="module")
def run(trained_run):
    return load_run(trained_run)


def png_bytes(image: np.ndarray) -> bytes:
    ok, encoded = cv2.imencode(".png", image[..., ::-1])
    assert ok
    return encoded.tobytes()


def two_patches(size=50):
    rng = np.random.default_rng(7)
    return patch(0, rng, size), patch(1, rng, size)


def bomb_png(side: int = 100_000) -> bytes:
    """A valid PNG header claiming side x side pixels: a decompression bomb's signature."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b"")


def files_field(named_bytes):
    return [("files", (name, data, "application/octet-stream")) for name, data in named_bytes]


def test_predict_gives_the_numbers_of_histoclass_predict(run, tmp_path):
    benign, malignant = two_patches()
    big = cv2.resize(malignant, (75, 75))  # another size: resized as training did
    paths = [write_png(tmp_path / name, image) for name, image in
             (("b.png", benign), ("m.png", malignant), ("big.png", big))]
    with TestClient(create_app(run)) as client:
        answer = client.post("/predict", files=files_field((p.name, p.read_bytes()) for p in paths))
    assert answer.status_code == 200
    body = answer.json()
    assert body["model"] == run.config.model and body["threshold"] == run.threshold
    expected = run.predict_files(paths)
    assert [r["filename"] for r in body["results"]] == ["b.png", "m.png", "big.png"]
    for result, file_prediction in zip(body["results"], expected):
        assert result["status"] == "ok"
        assert result["prob_malignant"] == pytest.approx(file_prediction.prob_malignant, abs=1e-6)
        assert result["prob_benign"] == pytest.approx(1 - result["prob_malignant"])
        assert result["label"] == file_prediction.class_name
        chosen = result["prob_malignant"] if result["label"] == "malignant" else result["prob_benign"]
        assert result["confidence"] == pytest.approx(chosen)
        assert result["gradcam_png"] is None


def test_bad_uploads_are_named_and_the_others_answered(run):
    benign, _ = two_patches()
    good = png_bytes(benign)
    uploads = [("good.png", good), ("notes.png", b"just some text\n"), ("cut.png", good[:60]),
               ("bomb.png", bomb_png()), ("empty.png", b""), ("tiny.png", png_bytes(benign[:4, :4])),
               ("../../etc/passwd", good)]
    with TestClient(create_app(run)) as client:
        results = client.post("/predict", files=files_field(uploads)).json()["results"]
    status = {r["filename"]: r["status"] for r in results}
    assert status["good.png"] == "ok" and results[0]["prob_malignant"] == pytest.approx(run.predict(benign), abs=1e-6)
    assert status["notes.png"].startswith("skipped: not an image")
    assert "truncated" in status["cut.png"] or "damaged" in status["cut.png"], status["cut.png"]
    assert "too large" in status["bomb.png"]
    assert "empty" in status["empty.png"]
    assert "too small" in status["tiny.png"]
    # A name is only echoed back; it reads no file.
    assert status["../../etc/passwd"] == "ok"
    for result in results:
        if result["status"] != "ok":
            assert result["prob_malignant"] is None and result["label"] is None


def test_token_guards_every_route_but_health(run, monkeypatch):
    benign, _ = two_patches()
    import histoclass.serve.app as serve_app
    reads = []
    read_file_parts = serve_app.read_file_parts

    async def counted(*args, **kwargs):
        reads.append(1)
        return await read_file_parts(*args, **kwargs)

    monkeypatch.setattr(serve_app, "read_file_parts", counted)
    with TestClient(create_app(run, token=TOKEN)) as client:
        assert client.get("/health").json() == {"status": "ok", "model_calls": 0}
        for method, path in (("get", "/"), ("get", "/model"), ("get", "/docs"), ("get", "/openapi.json")):
            refused = getattr(client, method)(path)
            assert refused.status_code == 401, path
            assert "Bearer" in refused.json()["detail"]
            assert getattr(client, method)(path, headers={"Authorization": "Bearer wrong"}).status_code == 401
            assert getattr(client, method)(path, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
        assert client.post("/predict", files=files_field([("a.png", png_bytes(benign))])).status_code == 401
        assert not reads  # refused before its body was read
        ok = client.post("/predict", files=files_field([("a.png", png_bytes(benign))]),
                         headers={"Authorization": f"Bearer {TOKEN}"})
        assert ok.status_code == 200 and ok.json()["results"][0]["status"] == "ok" and reads == [1]
        # A browser opens the page with ?token=; the page then sends the header itself.
        assert client.get("/", params={"token": TOKEN}).status_code == 200
        assert client.get("/", params={"token": "nope"}).status_code == 401


def test_upload_limits_answer_413_with_the_reason(run):
    benign, _ = two_patches()
    data = png_bytes(benign)
    limits = Limits(max_files=2, max_file_bytes=len(data) + 10, max_request_bytes=20 * len(data))
    with TestClient(create_app(run, limits=limits)) as client:
        too_many = client.post("/predict", files=files_field([(f"{i}.png", data) for i in range(3)]))
        assert too_many.status_code == 413 and "3 files" in too_many.json()["detail"]
        padded = data + b"\0" * 100  # a PNG with trailing bytes: over the per-file limit
        too_big = client.post("/predict", files=files_field([("big.png", padded)]))
        assert too_big.status_code == 413 and "big.png" in too_big.json()["detail"]
        body = client.post("/predict", content=b"x" * (21 * len(data)),
                           headers={"Content-Type": "multipart/form-data; boundary=b"})
        assert body.status_code == 413 and "request body" in body.json()["detail"]
        assert client.post("/predict", files=files_field([("ok.png", data)])).status_code == 200
        missing = client.post("/predict", data={"other": "x"})  # no `files` field at all
        assert missing.status_code == 422 and missing.json()["detail"][0]["loc"] == ["body", "files"]


def test_the_upload_parser_keeps_names_order_and_bytes_and_refuses_bad_bodies(run):
    """The route reads the multipart body itself (`read_file_parts`): every part of `files`, in
    order, byte for byte, with the client's names; other fields are passed over; limits count
    every part and give the full size; a body that is not multipart is refused with the reason."""
    benign, malignant = two_patches()
    first, second = png_bytes(benign), png_bytes(malignant)
    with TestClient(create_app(run)) as client:
        answer = client.post("/predict", data={"note": "x" * 5000},
                             files=[("files", ("naïve; (1).png", first, "image/png")),
                                    ("other", ("skip.png", b"not read", "image/png")),
                                    ("files", ("2.png", second, "image/png"))])
        assert answer.status_code == 200, answer.text
        results = answer.json()["results"]
        assert [r["filename"] for r in results] == ["naïve; (1).png", "2.png"]
        assert [r["prob_malignant"] for r in results] == pytest.approx(list(run.predict([benign, malignant])),
                                                                       abs=1e-6)
        # A body cut off before its closing boundary, and one that is no multipart at all.
        boundary = "histoclass-test-boundary"
        cut = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"a.png\"\r\n\r\n"
               ).encode() + first
        header = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
        garbage = client.post("/predict", content=b"\x00" * 64 + cut, headers=header)
        assert garbage.status_code == 400 and "multipart" in garbage.json()["detail"]
        as_json = client.post("/predict", json={"files": ["a.png"]})
        assert as_json.status_code == 422 and as_json.json()["detail"][0]["loc"] == ["body", "files"]
        schema = client.get("/openapi.json").json()["paths"]["/predict"]["post"]["requestBody"]
        files_schema = schema["content"]["multipart/form-data"]["schema"]["properties"]["files"]
        assert files_schema["items"]["format"] == "binary"
    limits = Limits(max_files=2, max_file_bytes=len(first) + len(second))
    with TestClient(create_app(run, limits=limits)) as client:
        five = client.post("/predict", files=files_field([(f"{i}.png", first) for i in range(5)]))
        assert five.status_code == 413 and "5 files" in five.json()["detail"]
        large = first + b"\0" * (len(first) + len(second))
        too_big = client.post("/predict", files=files_field([("ok.png", first), ("large.png", large)]))
        assert too_big.status_code == 413 and f"{len(large):,} bytes" in too_big.json()["detail"]


def test_model_health_docs_and_page(run):
    with TestClient(create_app(run)) as client:
        info = client.get("/model").json()
        assert info["model"] == run.config.model and info["recipe"] == run.config.recipe
        assert info["threshold"] == run.threshold and info["temperature"] == run.temperature
        assert info["image_size"] == run.image_size and info["engine"] == "keras"
        assert info["class_names"] == ["benign", "malignant"]
        assert info["validation_metrics"]["n"] > 0 and info["data"]["layout"] == "idc"
        assert "microns_per_pixel" in info
        schema = client.get("/openapi.json").json()
        assert {"/predict", "/model", "/health"} <= set(schema["paths"])
        assert "PredictResponse" in schema["components"]["schemas"]
        assert "swagger" in client.get("/docs").text.lower()
        page = client.get("/").text
        # Works offline: no script, style or image from another host.
        assert "http://" not in page and "https://" not in page
        assert 'id="files"' in page and "predict" in page


def test_gradcam_overlay_on_request(run):
    _, malignant = two_patches()
    with TestClient(create_app(run)) as client:
        result = client.post("/predict", params={"gradcam": "true"},
                             files=files_field([("m.png", png_bytes(malignant))])).json()["results"][0]
    prefix = "data:image/png;base64,"
    assert result["gradcam_png"].startswith(prefix)
    overlay = cv2.imdecode(np.frombuffer(base64.b64decode(result["gradcam_png"][len(prefix):]), np.uint8),
                           cv2.IMREAD_COLOR)
    assert overlay.shape == (200, 200, 3)


def test_batcher_combines_concurrent_requests_with_the_same_numbers(run):
    rng = np.random.default_rng(3)
    images = [patch(i % 2, rng)[None] for i in range(12)]
    batcher = Batcher(run, max_batch=64, max_wait_s=0.5)
    try:
        futures = [batcher.submit_nowait(image) for image in images]
        results = np.concatenate([future.result(timeout=60) for future in futures])
    finally:
        batcher.close()
    assert batcher.model_calls < len(images)
    np.testing.assert_allclose(results, run.predict(np.concatenate(images)), atol=1e-6)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def uvicorn_server(app):
    """A real uvicorn on 127.0.0.1 and a free port, in a thread, stopped on exit."""
    import uvicorn
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def test_real_uvicorn_on_loopback(run):
    import httpx
    benign, malignant = two_patches()
    with uvicorn_server(create_app(run, token=TOKEN)) as url:
        assert httpx.get(f"{url}/health", timeout=30).json() == {"status": "ok", "model_calls": 0}
        assert httpx.get(f"{url}/model", timeout=30).status_code == 401
        answer = httpx.post(f"{url}/predict", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60,
                            files=files_field([("b.png", png_bytes(benign)), ("m.png", png_bytes(malignant))]))
        assert httpx.get(f"{url}/health", timeout=30).json()["model_calls"] == 1  # both images in one call
    assert answer.status_code == 200
    got = [r["prob_malignant"] for r in answer.json()["results"]]
    np.testing.assert_allclose(got, run.predict([benign, malignant]), atol=1e-6)


@pytest.mark.slow
def test_page_in_chromium_shows_labels_and_bars(run, tmp_path):
    browser_path = chromium_path()
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    benign, malignant = two_patches()
    paths = [write_png(tmp_path / "benign_patch.png", benign), write_png(tmp_path / "malignant_patch.png", malignant)]
    expected = run.predict([benign, malignant])
    with uvicorn_server(create_app(run, token=TOKEN)) as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=browser_path,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"])
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 700})
            requests = []
            page.on("request", lambda request: requests.append(request.url))
            page.goto(f"{url}/?token={TOKEN}", wait_until="load")
            # Locator waits: the page's Content-Security-Policy forbids the eval of wait_for_function.
            page.locator("#model", has_text="Model ").wait_for(timeout=30_000)
            page.check("#gradcam")
            page.set_input_files("#files", [str(p) for p in paths])
            page.locator(".result").nth(1).wait_for(timeout=60_000)
            page.locator(".result img.gradcam").nth(1).wait_for(timeout=30_000)
            shown = page.eval_on_selector_all(".result", """cards => cards.map(card => ({
                filename: card.dataset.filename,
                label: card.querySelector('.label').textContent,
                bars: Array.from(card.querySelectorAll('.bar')).map(bar => [bar.dataset.class,
                      bar.querySelector('.value').textContent, bar.querySelector('.fill').style.width]),
                gradcam: !!card.querySelector('img.gradcam') && card.querySelector('img.gradcam').naturalWidth}))""")
            page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
            if os.environ.get("HISTOCLASS_SCREENSHOT"):  # for the docs: where to keep a copy
                page.screenshot(path=os.environ["HISTOCLASS_SCREENSHOT"], full_page=True)
        finally:
            browser.close()
    by_name = {card["filename"]: card for card in shown}
    for path, prob in zip(paths, expected):
        card = by_name[path.name]
        assert card["label"] == ("malignant" if prob >= run.threshold else "benign")
        for (name, text, width), value in zip(card["bars"], (1 - prob, prob)):
            assert text == f"{100 * value:.1f}%"
            assert float(width.rstrip("%")) == pytest.approx(100 * value, abs=0.051)
        assert [name for name, _, _ in card["bars"]] == ["benign", "malignant"]
        assert card["gradcam"] == 200
    # Nothing but the server itself was asked for anything (blob: and data: are the page's own).
    assert [u for u in requests if not u.startswith((url, "blob:", "data:"))] == []
    assert (tmp_path / "page.png").stat().st_size > 10_000


def test_cli_serve_binds_loopback_and_reads_the_token_from_the_environment(trained_run, monkeypatch):
    import uvicorn
    from histoclass.cli import main
    started = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: started.update(app=app, **kwargs))
    monkeypatch.setenv("HISTOCLASS_TOKEN", TOKEN)
    assert main(["serve", str(trained_run)]) == 0
    assert (started["host"], started["port"]) == ("127.0.0.1", 8000)
    with TestClient(started["app"]) as client:
        assert client.get("/model").status_code == 401
        info = client.get("/model", headers={"Authorization": f"Bearer {TOKEN}"}).json()
        assert info["engine"] == "keras"  # the default, measured the faster service here
    monkeypatch.delenv("HISTOCLASS_TOKEN")
    assert main(["serve", str(trained_run), "--port", "9123", "--engine", "onnx"]) == 0
    assert started["port"] == 9123
    with TestClient(started["app"]) as client:
        assert client.get("/model").json()["engine"] == "onnx"
