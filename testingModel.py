"""The original project's evaluation entry point: evaluate the model that app.py trained on
images/testSet and write the visual results (each image with its predicted label and confidence;
per-class probability bars).

    python testingModel.py [RUN_DIR]

A thin call into `histoclass evaluate`; the figures are written beside metrics.json.
"""
import sys

from histoclass.cli import main

if __name__ == "__main__":
    run_dir = sys.argv[1] if len(sys.argv) > 1 else "runs/app"
    sys.exit(main(["evaluate", run_dir]))
