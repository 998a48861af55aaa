"""`histoclass demo`: the whole pipeline on synthetic IDC-style data, on any machine."""
from __future__ import annotations

import logging
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
    log.info("1/4 synthesising %d IDC-style slides into %s", num_patients, data_dir)
    generate_idc_dataset(data_dir, num_patients=num_patients, seed=0, slide_scale=slide_scale, progress=progress)
    log.info("2/4 training the original CNN of model.py (split by patient)")
    config = config_for_recipe("original", num_epochs=num_epochs, batch_size=64)
    train(data_dir, run_dir, config, cache_dir=out / "cache", progress=progress)
    log.info("3/4 evaluating on the test patients")
    metrics, _ = write_evaluation(load_run(run_dir), cache_dir=out / "cache", progress=progress)
    print(format_table(metrics))
    log.info("4/4 writing the report")
    report = write_report(run_dir, out_dir=run_dir / "report", cache_dir=out / "cache", progress=progress)
    minutes = (time.perf_counter() - started) / 60
    print(f"\nDemo done in {minutes:.1f} min.\n"
          f"  report:  {report}\n"
          f"  figures: {run_dir / 'evaluation'}\n"
          f"  model:   {run_dir / 'model.keras'}\n"
          f"Open the report in a browser; predict new patches with:\n"
          f"  histoclass predict {run_dir} {data_dir}")
    return {"report": report, "run": run_dir, "data": data_dir}
