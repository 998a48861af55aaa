"""`histoclass demo`: the whole pipeline on synthetic IDC-style data, on any machine."""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from .config import config_for_recipe
from .errors import HistoclassError

log = logging.getLogger(__name__)

DEMO_PATIENTS = 16
DEMO_SLIDE_SCALE = 0.8  # about 640 patches a patient: ~10,000 patches, a minute of training


def run_demo(out: Path, num_epochs: int = 8, progress: bool = True, num_patients: int = DEMO_PATIENTS,
             slide_scale: float = DEMO_SLIDE_SCALE) -> dict[str, Path]:
    from .evaluation.metrics import format_table
    from .inference.run import load_run
    from .report.evaluation import write_evaluation
    from .report.report import write_report
    from .synth import generate_idc_dataset
    from .training.train import train

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise HistoclassError(f"{out} is not empty; give the demo a new --out folder")
    started = time.perf_counter()
    data_dir, run_dir = out / "data", out / "run"
    slides_dir = out / "data-slides"
    log.info("1/5 synthesising %d IDC-style slides into %s (whole slides in %s)", num_patients, data_dir, slides_dir)
    generate_idc_dataset(data_dir, num_patients=num_patients, seed=0, slide_scale=slide_scale, progress=progress,
                         slides_dir=slides_dir)
    log.info("2/5 training the original CNN of model.py (split by patient)")
    config = config_for_recipe("original", num_epochs=num_epochs, batch_size=64)
    train(data_dir, run_dir, config, cache_dir=out / "cache", progress=progress)
    log.info("3/5 evaluating on the test patients")
    run = load_run(run_dir)
    metrics, _ = write_evaluation(run, cache_dir=out / "cache", progress=progress)
    print(format_table(metrics))
    log.info("4/5 running the model over a test patient's whole slide")
    slide_out = out / "slides"
    slide_section = _whole_slide(run, slides_dir, slide_out, run_dir / "report", progress)
    log.info("5/5 writing the report")
    report = write_report(run_dir, out_dir=run_dir / "report", cache_dir=out / "cache", progress=progress,
                          extra_sections=[slide_section])
    minutes = (time.perf_counter() - started) / 60
    print(f"\nDemo done in {minutes:.1f} min.\n"
          f"  report:  {report}\n"
          f"  figures: {run_dir / 'evaluation'}\n"
          f"  model:   {run_dir / 'model.keras'}\n"
          f"  slide:   {slide_out / 'index.html'}\n"
          f"Open the report in a browser; predict new patches with:\n"
          f"  histoclass predict {run_dir} {data_dir}")
    return {"report": report, "run": run_dir, "data": data_dir, "slides": slide_out}


def _whole_slide(run, slides_dir: Path, slide_out: Path, report_dir: Path, progress: bool):
    """`histoclass slide` on the test patient with the most tumour; its section for the report."""
    import cv2

    from .report.html import Section, escape
    from .runs.folder import read_split
    from .slides.outputs import slide_section
    from .slides.pipeline import run_slides
    records, parts = read_split(run.folder)
    test_patients = sorted({r.group for r, part in zip(records, parts) if part == "test"})
    if not test_patients:
        return Section("wholeslide", "Whole slide").text("The run has no test patients, so no slide was run.")

    def tumour_pixels(patient: str) -> int:
        mask = cv2.imread(str(slides_dir / "truth" / f"{patient}.png"), cv2.IMREAD_GRAYSCALE)
        return int((mask > 0).sum()) if mask is not None else 0

    patient = max(test_patients, key=tumour_pixels)
    summary = run_slides(run, [slides_dir / f"{patient}.tiff"], slide_out, progress=progress)[0]
    section = slide_section(slide_out / summary["folder"], summary, key="wholeslide",
                            title=f"Whole slide: test patient {patient}")
    link = os.path.relpath(slide_out / "index.html", report_dir)
    section.body.insert(0, f'<p>The model run over the whole slide of a test patient, as '
                           f'<code>histoclass slide {escape(run.folder)} {escape(slides_dir / (patient + ".tiff"))} '
                           f'--out {escape(slide_out)}</code> does: <a href="{escape(link)}">its page</a>, '
                           f'with tiles.csv and regions.geojson for QuPath beside it.</p>')
    return section
