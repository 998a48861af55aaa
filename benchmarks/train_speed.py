"""Training images/s of the strong recipe's model against the reference's CNN, side by side in
one process, on the same 50x50 images; prints a table of ratios (histoclass / reference).

    python benchmarks/train_speed.py [--images 4096] [--epochs 3] [--rounds 2]

The reference: the plain Keras script's CNN (shared/reference/seed_reference.py), model.fit on
a float32 array, batch 32, Adam. histoclass: `training.train._fit`'s pieces (create_model,
TrainingBatches, the recipe's optimiser), one variant per row. Each row's number is the best
epoch after the first (which traces the graph) over `--rounds` interleaved rounds, so a noisy
neighbour on a shared machine hurts every row alike; the table gives each row's ratio to the
reference of the same round (median, and the range over rounds), by the wall clock and by the
process's CPU time (all threads), which a loaded machine inflates less.

"strong, Keras's batch norm" builds histo_resnet with keras.layers.BatchNormalization instead
of its FusedBatchNormalization (the model before issue 25, item 3): the before and after of
that change, side by side.
"""
from __future__ import annotations

import argparse
import time

import numpy as np


def reference_model():
    import keras
    from keras import layers
    # As in seed_reference.py: 32-64-128 conv, dense 256, dropout 0.5, softmax 2.
    model = keras.Sequential([
        keras.Input((50, 50, 3)),
        layers.Conv2D(32, 3, activation="relu"), layers.MaxPooling2D(),
        layers.Conv2D(64, 3, activation="relu"), layers.MaxPooling2D(),
        layers.Conv2D(128, 3, activation="relu"), layers.MaxPooling2D(),
        layers.Flatten(), layers.Dense(256, activation="relu"), layers.Dropout(0.5),
        layers.Dense(2, activation="softmax")])
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    return model


class EpochTimer:
    def __init__(self):
        import keras

        class Callback(keras.callbacks.Callback):
            def on_epoch_begin(cb, epoch, logs=None):
                cb.started, cb.cpu = time.perf_counter(), time.process_time()

            def on_epoch_end(cb, epoch, logs=None):
                self.seconds.append(time.perf_counter() - cb.started)
                self.cpu_seconds.append(time.process_time() - cb.cpu)
        self.seconds: list[float] = []
        self.cpu_seconds: list[float] = []  # all of the process's threads
        self.callback = Callback()


def run_reference(images: np.ndarray, targets: np.ndarray, epochs: int) -> EpochTimer:
    model = reference_model()
    timer = EpochTimer()
    model.fit(images.astype(np.float32) / 255.0, targets, batch_size=32, epochs=epochs, verbose=0,
              callbacks=[timer.callback])
    return timer


def run_histoclass(images: np.ndarray, labels: np.ndarray, epochs: int, recipe: str,
                   keras_batch_norm: bool = False, **overrides) -> EpochTimer:
    import keras
    from histoclass.config import config_for_recipe
    from histoclass.models import create_model, histo_resnet
    from histoclass.training.batches import TrainingBatches, class_weights
    from histoclass.training.train import _optimizer
    config = config_for_recipe(recipe, num_epochs=epochs, **overrides)
    batches = TrainingBatches(images, np.arange(len(images)), labels, config.batch_size, seed=0,
                              weights=class_weights(labels))
    fused = histo_resnet.FusedBatchNormalization
    if keras_batch_norm:
        histo_resnet.FusedBatchNormalization = keras.layers.BatchNormalization
    try:
        model = create_model(config.model, config.image_size, config.augmentation, config.seed)
    finally:
        histo_resnet.FusedBatchNormalization = fused
    model.compile(optimizer=_optimizer(config, len(batches)), loss="categorical_crossentropy")
    timer = EpochTimer()
    model.fit(batches, epochs=epochs, verbose=0, callbacks=[timer.callback])
    return timer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=4096)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    import keras
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, args.images)
    # Learnable toy tissue: malignant patches darker and more purple, with noise.
    base = np.where(labels[:, None], [120, 60, 160], [235, 170, 200])[:, None, None, :]
    images = np.clip(base + rng.normal(0, 25, (args.images, 50, 50, 3)), 0, 255).astype(np.uint8)
    targets = np.eye(2, dtype=np.float32)[labels]
    variants = {
        "reference CNN (float32 array, batch 32)": lambda: run_reference(images, targets, args.epochs),
        "original recipe": lambda: run_histoclass(images, labels, args.epochs, "original"),
        "strong (histo_resnet, tissue aug)": lambda: run_histoclass(images, labels, args.epochs, "strong"),
        "strong, Keras's batch norm (before)": lambda: run_histoclass(images, labels, args.epochs, "strong",
                                                                      keras_batch_norm=True),
        "strong, no augmentation": lambda: run_histoclass(images, labels, args.epochs, "strong_no_aug"),
        "strong, histo_resnet_lite": lambda: run_histoclass(images, labels, args.epochs, "strong",
                                                            model="histo_resnet_lite"),
    }
    rates: dict[str, list[float]] = {name: [] for name in variants}
    cpu_rates: dict[str, list[float]] = {name: [] for name in variants}
    for round_index in range(args.rounds):
        for name, fn in variants.items():
            timer = fn()  # the first epoch traces the graph: the best of the others counts
            rates[name].append(args.images / min(timer.seconds[1:]))
            cpu_rates[name].append(args.images / min(timer.cpu_seconds[1:]))
            print(f"round {round_index}: {name}: {rates[name][-1]:,.0f} images/s, "
                  f"{cpu_rates[name][-1]:,.0f} images per CPU second", flush=True)
    name0 = "reference CNN (float32 array, batch 32)"
    print(f"\n| training, {args.images} 50x50 images, {args.rounds} rounds | best images/s "
          f"| x reference, wall (median, range) | x reference, CPU time (median, range) |\n|---|---:|---:|---:|")
    for name in variants:
        wall = np.array(rates[name]) / np.array(rates[name0])
        cpu = np.array(cpu_rates[name]) / np.array(cpu_rates[name0])
        print(f"| {name} | {max(rates[name]):,.0f} | {np.median(wall):.2f} ({wall.min():.2f}-{wall.max():.2f}) "
              f"| {np.median(cpu):.2f} ({cpu.min():.2f}-{cpu.max():.2f}) |")


if __name__ == "__main__":
    main()
