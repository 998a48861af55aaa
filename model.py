"""The original project's CNN, as `app.py` trains it: three 3x3 convolutions (32, 64, 128
filters, ReLU), each followed by 2x2 max pooling, then dense 256 (ReLU), dropout 0.5 and a
2-way softmax (benign, malignant), compiled with Adam and categorical cross-entropy.

    from model import build_model
    model = build_model()                  # 50x50 RGB patches scaled to [0, 1]
    model.fit(images / 255.0, keras.utils.to_categorical(labels, 2), epochs=10, batch_size=32)

    python model.py                        # prints the layers

The layers are histoclass's own definition of this CNN (`--model original_cnn`, the default of
`histoclass train`), so this file and the package cannot drift apart. `histoclass train` wraps
them in its input front (raw 0-255 pixels in, scaled inside the model); the model built here
takes images already scaled to [0, 1], as the original project's scripts fed it.
"""
import keras

from histoclass.models.original_cnn import original_cnn

IMAGE_SIZE = 50


def build_model(input_shape: tuple[int, int, int] = (IMAGE_SIZE, IMAGE_SIZE, 3), compile: bool = True) -> keras.Model:
    """The original CNN on images of `input_shape` scaled to [0, 1]; compiled (Adam, categorical
    cross-entropy, accuracy) unless `compile` is False."""
    inputs = keras.Input(input_shape, name="image")
    model = keras.Model(inputs, original_cnn(inputs), name="original_cnn")
    if compile:
        model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
    return model


if __name__ == "__main__":
    build_model().summary()
