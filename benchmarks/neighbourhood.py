"""The neighbourhood, measured: Dice on rebuilt real slides of held-out patients with each tile's
own probability, and with the probabilities smoothed over neighbouring tiles at the threshold
fitted on the validation patients' patch grids (calibration.json `neighbourhood`).

    nice -n 10 python benchmarks/neighbourhood.py --work /tmp/neighbourhood          # trains once, cached
    python benchmarks/neighbourhood.py --work /tmp/neighbourhood --epochs 2           # a smoke run

One run (the `strong` recipe) is trained on the idc-sample patients other than HELD_OUT and
VALIDATION (split file; test = HELD_OUT); finalize fits the neighbourhood's threshold on the
VALIDATION patients (complete ones: their patches form grids). The HELD_OUT patients are rebuilt
(`histoclass rebuild`) and run through `histoclass slide --truth` twice: as the run is, and with
the neighbourhood removed from a copy of its calibration.json. Prints per slide and pooled
Dice (over classified tiles), tile balanced accuracy and the neighbourhood's fitted values.
"""
from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

HELD_OUT = ("8864", "8865", "10253", "8917", "9124")
VALIDATION = ("8950", "8955", "9035", "9125", "14082")


def trained_run(work: Path, data: Path, epochs: int) -> Path:
    from histoclass.config import config_for_recipe
    from histoclass.training.train import train
    run = work / f"run-{epochs}ep"
    if (run / "calibration.json").exists():
        return run
    shutil.rmtree(run, ignore_errors=True)
    patients = [row["patient"] for row in csv.DictReader(open(data / "patients.csv"))]
    split = work / "split.csv"
    work.mkdir(parents=True, exist_ok=True)
    with open(split, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["group", "split"])
        for patient in patients:
            writer.writerow([patient, "test" if patient in HELD_OUT else "val" if patient in VALIDATION else "train"])
    config = config_for_recipe("strong", num_epochs=epochs)
    print(f"training {run.name} ...", flush=True)
    return train(data, run, config, split_file=split, cache_dir=work / "cache", progress=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "idc-sample")
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--train-only", action="store_true")
    args = parser.parse_args()
    run = trained_run(args.work, args.data, args.epochs)
    if args.train_only:
        return


if __name__ == "__main__":
    main()
