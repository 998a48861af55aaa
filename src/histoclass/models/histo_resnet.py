"""A small residual network sized for 50x50 patches: about the seed's compute, more accuracy.

Downsampling comes early (a strided stem) because most of a CNN's CPU time is spent at full
resolution; batch normalisation and global average pooling replace the seed's 800k-weight dense
layer, which is where it overfits.
"""
from keras import layers

from .registry import register_model


def _residual_block(x, filters: int, stride: int, name: str):
    shortcut = x
    y = layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False, name=f"{name}_conv1")(x)
    y = layers.BatchNormalization(name=f"{name}_bn1")(y)
    y = layers.Activation("relu", name=f"{name}_relu1")(y)
    y = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv2")(y)
    y = layers.BatchNormalization(name=f"{name}_bn2")(y)
    if stride != 1 or shortcut.shape[-1] != filters:
        shortcut = layers.Conv2D(filters, 1, strides=stride, use_bias=False, name=f"{name}_proj")(shortcut)
        shortcut = layers.BatchNormalization(name=f"{name}_proj_bn")(shortcut)
    return layers.Add(name=f"{name}_add")([y, shortcut])


@register_model("histo_resnet")
def histo_resnet(x):
    x = layers.Conv2D(32, 3, strides=2, padding="same", use_bias=False, name="stem_conv")(x)
    x = layers.BatchNormalization(name="stem_bn")(x)
    x = layers.Activation("relu", name="stem_relu")(x)
    x = _residual_block(x, 32, 1, "block1")
    x = layers.Activation("relu", name="block1_out")(x)
    x = _residual_block(x, 64, 2, "block2")
    x = layers.Activation("relu", name="block2_out")(x)
    x = _residual_block(x, 128, 2, "block3")
    x = layers.Activation("relu", name="last_conv")(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    x = layers.Dropout(0.2, name="dropout")(x)
    return layers.Dense(2, activation="softmax", name="probabilities")(x)
