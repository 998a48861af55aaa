"""Opens report.html in headless Chromium: every section there, every image loaded."""
import json
from pathlib import Path

import pytest

from histoclass.report.report import write_report

from conftest import chromium_path

SECTIONS = ("summary", "metrics", "neighbourhood", "threshold", "confusion", "curves", "calibration", "training",
            "visual", "errors", "gradcam", "patients", "slides")


@pytest.mark.slow
def test_report_opens_in_chromium(trained_run, tmp_path):
    browser_path = chromium_path()
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    report = write_report(trained_run, out_dir=tmp_path / "report", num_resamples=200, progress=False)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=browser_path,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            requests = []
            page.on("request", lambda request: requests.append(request.url))
            page.goto(Path(report).as_uri(), wait_until="load")
            found = page.eval_on_selector_all("section[data-section]", "els => els.map(e => e.id)")
            assert list(found) == list(SECTIONS)
            images = page.evaluate(
                "Array.from(document.images).map(i => [i.dataset.file, i.complete && i.naturalWidth > 0])")
            written = json.loads((Path(report).parent / "report.json").read_text())["figures"]
            assert sorted(name for name, _ in images) == sorted(written)
            assert {"confusion_matrix.png", "roc_pr.png", "reliability.png", "gradcam.png"} <= set(written)
            assert any(name.startswith("slide_") for name in written)
            assert all(loaded for _, loaded in images), images
            # Self-contained: nothing fetched beyond the page itself.
            assert [u for u in requests if not u.startswith(("file:", "data:"))] == []
            page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        finally:
            browser.close()
    assert (tmp_path / "report.png").stat().st_size > 50_000
