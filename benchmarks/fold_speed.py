"""Inference speed with batch normalisation folded into the convolutions, side by side.

    python benchmarks/fold_speed.py

Prints images/s of `predict_probabilities` for the original CNN and for each residual model as
trained and folded (`histoclass.models.fold`), alternating twice in one process and keeping
each one's best, on 16,384 random 50x50 patches.
"""
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

from histoclass.inference.probabilities import predict_probabilities  # noqa: E402
from histoclass.models import create_model  # noqa: E402
from histoclass.models.fold import fold_batch_norm  # noqa: E402

NUM_IMAGES = 16384


def images_per_second(model, images) -> float:
    predict_probabilities(model, images[:2048])  # warm-up: tracing
    started = time.perf_counter()
    predict_probabilities(model, images)
    return len(images) / (time.perf_counter() - started)


def main() -> None:
    images = np.random.default_rng(0).integers(0, 256, (NUM_IMAGES, 50, 50, 3), dtype=np.uint8)
    original = create_model("original_cnn")
    print(f"{'model':<20}{'original_cnn':>14}{'as trained':>12}{'folded':>10}{'folded / as trained':>22}")
    for name in ("histo_resnet", "histo_resnet_lite"):
        trained = create_model(name, augmentation="tissue")
        variants = {"original_cnn": original, "as trained": trained, "folded": fold_batch_norm(trained)}
        best = {label: 0.0 for label in variants}
        for _ in range(2):
            for label, model in variants.items():
                best[label] = max(best[label], images_per_second(model, images))
        print(f"{name:<20}{best['original_cnn']:>14,.0f}{best['as trained']:>12,.0f}{best['folded']:>10,.0f}"
              f"{best['folded'] / best['as trained']:>22.2f}")


if __name__ == "__main__":
    main()
