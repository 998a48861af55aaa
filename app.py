"""Train the original CNN of model.py on your images and save the trained model.

    python app.py [IMAGES_DIR] [RUN_DIR]      # defaults: images, runs/app

IMAGES_DIR holds trainSet/ and testSet/ (or the Kaggle IDC folders); the model is trained as
the original project trained it (the CNN of model.py, Adam, batch 32, 10 epochs, no class
weights), on trainSet less a validation part of whole patients, and saved in RUN_DIR.
images/testSet is kept apart for `python testingModel.py`. The same as `histoclass train
--data IMAGES_DIR --out RUN_DIR`.
"""
import sys

from histoclass.cli import main

if __name__ == "__main__":
    images = sys.argv[1] if len(sys.argv) > 1 else "images"
    run_dir = sys.argv[2] if len(sys.argv) > 2 else "runs/app"
    sys.exit(main(["train", "--data", images, "--out", run_dir]))
