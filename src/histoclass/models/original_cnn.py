"""The original CNN of model.py, exactly: three conv/pool stages, dense 256, dropout 0.5, softmax 2."""
from keras import layers

from .registry import register_model


@register_model("original_cnn", aliases=("seed_cnn",))
def original_cnn(x):
    x = layers.Conv2D(32, (3, 3), activation="relu", name="conv1")(x)
    x = layers.MaxPooling2D(name="pool1")(x)
    x = layers.Conv2D(64, (3, 3), activation="relu", name="conv2")(x)
    x = layers.MaxPooling2D(name="pool2")(x)
    x = layers.Conv2D(128, (3, 3), activation="relu", name="last_conv")(x)
    x = layers.MaxPooling2D(name="pool3")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(256, activation="relu", name="dense")(x)
    x = layers.Dropout(0.5, name="dropout")(x)
    return layers.Dense(2, activation="softmax", name="probabilities")(x)
