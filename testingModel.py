"""Test the model that app.py trained on the images of images/testSet, and draw the results:
each image with its predicted label (benign or malignant) and confidence, and the probability
of each class.

    python testingModel.py [RUN_DIR]          # default: runs/app

Prints the test metrics (accuracy, sensitivity, specificity, F1, ROC-AUC, ...) and writes them
(metrics.json, predictions.csv) with the figures into RUN_DIR/evaluation. The same as
`histoclass evaluate RUN_DIR`.
"""
import sys

from histoclass.cli import main

if __name__ == "__main__":
    run_dir = sys.argv[1] if len(sys.argv) > 1 else "runs/app"
    sys.exit(main(["evaluate", run_dir]))
