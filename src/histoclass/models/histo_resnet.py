"""Small residual networks sized for 50x50 patches: about the original CNN's compute, more accuracy.

Downsampling comes early (a strided stem) because most of a CNN's CPU time is spent at full
resolution; batch normalisation and global average pooling replace the original CNN's 500k-weight dense
layer, which is where it overfits. Two sizes, measured in docs/recipe.md (the recipes use
`histo_resnet`; the lite one is about twice as fast on a CPU and less accurate):

- `histo_resnet`: stem to 25x25, residual stages at 25, 13 and 7 px (24, 48, 96 channels),
  about 37 MFLOPs a 50x50 patch, the original CNN's 35;
- `histo_resnet_lite`: stem and first stage both strided, stages at 13, 7 and 4 px (32, 64, 128
  channels), about 21 MFLOPs.
"""
from __future__ import annotations

import keras
from keras import layers

from .registry import register_model

# Keras's default 0.99 needs several hundred steps before the moving statistics that inference
# uses are right; a small set at batch 128 (BreastMNIST: 4 steps an epoch) never gets there.
BN_MOMENTUM = 0.9


@keras.saving.register_keras_serializable(package="histoclass")
class FusedBatchNormalization(layers.BatchNormalization):
    """Keras's batch normalization, whose training step runs TensorFlow's fused kernel on the
    TensorFlow backend: the same normalization, statistics and moving averages (the batch
    variance without Bessel's correction, as Keras computes it), in one pass over the
    activations forward and one backward instead of Keras's several elementwise ones (a
    histo_resnet training step about 15% faster on CPU, docs/speed.md). Inference, other
    backends and settings the kernel lacks (masks, renorm, synchronized, other axes) run
    Keras's own code."""

    def _fusable(self, inputs, training, mask) -> bool:
        return (bool(training) and self.trainable and mask is None and not self.renorm
                and not self.synchronized and self.center and self.scale
                and keras.backend.backend() == "tensorflow" and len(inputs.shape) == 4
                and self.axis in (-1, 3) and inputs.dtype == "float32")

    def call(self, inputs, training=None, mask=None):
        if not self._fusable(inputs, training, mask):
            return super().call(inputs, training=training, mask=mask)
        import tensorflow as tf
        outputs, mean, variance = tf.compat.v1.nn.fused_batch_norm(
            inputs, self.gamma, self.beta, epsilon=self.epsilon, data_format="NHWC", is_training=True)
        # The kernel returns the batch variance with Bessel's correction; Keras averages the
        # plain one into its moving variance.
        count = tf.cast(tf.reduce_prod(tf.shape(inputs)[:3]), variance.dtype)
        variance = variance * (count - 1.0) / count
        self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
        self.moving_variance.assign(self.moving_variance * self.momentum + variance * (1.0 - self.momentum))
        return outputs


def _residual_block(x, filters: int, stride: int, name: str):
    shortcut = x
    y = layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False, name=f"{name}_conv1")(x)
    y = FusedBatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn1")(y)
    y = layers.Activation("relu", name=f"{name}_relu1")(y)
    y = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv2")(y)
    y = FusedBatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn2")(y)
    if stride != 1 or shortcut.shape[-1] != filters:
        shortcut = layers.Conv2D(filters, 1, strides=stride, use_bias=False, name=f"{name}_proj")(shortcut)
        shortcut = FusedBatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_proj_bn")(shortcut)
    return layers.Add(name=f"{name}_add")([y, shortcut])


def residual_network(x, widths: tuple[int, ...], first_stride: int, dropout: float = 0.2):
    """Strided 3x3 stem, one residual block per width (the first with `first_stride`, the
    others halving the resolution), global average pooling, softmax over 2 classes."""
    x = layers.Conv2D(widths[0], 3, strides=2, padding="same", use_bias=False, name="stem_conv")(x)
    x = FusedBatchNormalization(momentum=BN_MOMENTUM, name="stem_bn")(x)
    x = layers.Activation("relu", name="stem_relu")(x)
    for index, width in enumerate(widths, start=1):
        x = _residual_block(x, width, first_stride if index == 1 else 2, f"block{index}")
        # The last activation is named `last_conv`: Grad-CAM looks for it.
        x = layers.Activation("relu", name="last_conv" if index == len(widths) else f"block{index}_out")(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    x = layers.Dropout(dropout, name="dropout")(x)
    return layers.Dense(2, activation="softmax", name="probabilities")(x)


@register_model("histo_resnet")
def histo_resnet(x):
    return residual_network(x, (24, 48, 96), first_stride=1)


@register_model("histo_resnet_lite")
def histo_resnet_lite(x):
    return residual_network(x, (32, 64, 128), first_stride=2)
