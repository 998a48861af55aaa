"""The original project's training entry point: train the original CNN of model.py on
images/trainSet and save the model.

    python app.py [IMAGES_DIR] [RUN_DIR]

A thin call into `histoclass train` (the original recipe: the CNN of model.py, Adam, batch 32,
10 epochs): images/testSet is kept as the test split, and a validation split is carved from
trainSet by patient where the file names give patients. Evaluate it with `python testingModel.py`.
"""
import sys

from histoclass.cli import main

if __name__ == "__main__":
    images = sys.argv[1] if len(sys.argv) > 1 else "images"
    run_dir = sys.argv[2] if len(sys.argv) > 2 else "runs/app"
    sys.exit(main(["train", "--data", images, "--out", run_dir]))
