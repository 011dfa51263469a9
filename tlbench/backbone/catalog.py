"""The registered backbones: every keras.applications constructor, plus the pixels floor.

A name is the constructor's in lower case. Each entry binds the constructor's preprocess_input
(none where the model rescales inside), the range it maps [0, 255] into, the minimum and default
input sizes and the headless ImageNet file Keras looks for (keras/src/applications/*.py).
"""

from __future__ import annotations

from tlbench import registry
from tlbench.backbone.spec import BackboneSpec, application, preprocess_input, unchanged

# preprocess_input mode -> (range of [0, 255] after it, how it is described)
CAFFE = ((-123.68, 151.061), "caffe: BGR, ImageNet mean subtracted")
TF = ((-1.0, 1.0), "tf: to [-1, 1]")
TORCH = ((-2.1179, 2.64), "torch: to [0, 1], ImageNet mean and std")
INSIDE = ((0.0, 255.0), "none: the model rescales inside")
KERAS_V1 = "{}_weights_tf_dim_ordering_tf_kernels_notop.h5"


def keras_application(constructor: str, family: str, module: str | None, mode, default: int,
                      imagenet: str, *, min_size: int = 32, **facts) -> BackboneSpec:
    """An entry for keras.applications.<constructor>; module None: no preprocess_input needed."""
    (low, high), described = mode
    return BackboneSpec(
        name=constructor.lower(), build=application(constructor),
        preprocess=preprocess_input(module) if module else unchanged,
        preprocessed_range=(low, high), default_input_size=default, min_input_size=min_size,
        family=family, preprocessing=described, imagenet_template=imagenet, **facts)


def pixels_model(input_shape: tuple[int, int, int], weights: None = None):
    """The identity "backbone": pixels rescaled from [0, 255] to [0, 1], no weights."""
    import keras

    inputs = keras.Input(shape=input_shape)
    return keras.Model(inputs, keras.layers.Rescaling(1 / 255)(inputs), name="pixels")


EFFICIENTNET_SIZES = {"B0": 224, "B1": 240, "B2": 260, "B3": 300, "B4": 380, "B5": 456,
                      "B6": 528, "B7": 600}
EFFICIENTNETV2_SIZES = {"B0": 224, "B1": 240, "B2": 260, "B3": 300, "S": 384, "M": 480,
                        "L": 480}
CONVNEXT_SIZES = ("Tiny", "Small", "Base", "Large", "XLarge")

SPECS = [
    # VGG has no normalisation layers: it does not learn from random weights at pretrain.lr.
    keras_application("VGG16", "vgg", "vgg16", CAFFE, 224, KERAS_V1.format("vgg16"),
                      normalized=False),
    keras_application("VGG19", "vgg", "vgg19", CAFFE, 224, KERAS_V1.format("vgg19"),
                      normalized=False),
    *[keras_application(f"ResNet{depth}", "resnet", "resnet50" if depth == 50 else "resnet",
                        CAFFE, 224, KERAS_V1.format(f"resnet{depth}"))
      for depth in (50, 101, 152)],
    *[keras_application(f"ResNet{depth}V2", "resnet_v2", "resnet_v2", TF, 224,
                        KERAS_V1.format(f"resnet{depth}v2")) for depth in (50, 101, 152)],
    *[keras_application(f"DenseNet{depth}", "densenet", "densenet", TORCH, 224,
                        KERAS_V1.format(f"densenet{depth}")) for depth in (121, 169, 201)],
    # Keras picks MobileNet's file by rows; other sizes load the 224 weights (with a warning).
    keras_application("MobileNet", "mobilenet", "mobilenet", TF, 224,
                      "mobilenet_1_0_{rows}_tf_no_top.h5", imagenet_sizes=(128, 160, 192, 224)),
    keras_application("MobileNetV2", "mobilenet_v2", "mobilenet_v2", TF, 224,
                      "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_{rows}_no_top.h5",
                      imagenet_sizes=(96, 128, 160, 192, 224)),
    *[keras_application(f"MobileNetV3{kind}", "mobilenet_v3", None, INSIDE, 224,
                        f"weights_mobilenet_v3_{kind.lower()}_224_1.0_float_no_top_v2.h5")
      for kind in ("Small", "Large")],
    *[keras_application(f"EfficientNet{variant}", "efficientnet", None, INSIDE, size,
                        f"efficientnet{variant.lower()}_notop.h5")
      for variant, size in EFFICIENTNET_SIZES.items()],
    *[keras_application(f"EfficientNetV2{variant}", "efficientnet_v2", None, INSIDE, size,
                        f"efficientnetv2-{variant.lower()}_notop.h5")
      for variant, size in EFFICIENTNETV2_SIZES.items()],
    # ConvNeXt's stem patchifies 4x4 at once: no stride-2 stage, four stages. The layer before
    # a stage's first layer is not the one tensor feeding it either.
    *[keras_application(f"ConvNeXt{size}", "convnext", None, INSIDE, 224,
                        f"convnext_{size.lower()}_notop.h5", stages=(4, 8, 16, 32),
                        cut_at_one_tensor=False)
      for size in CONVNEXT_SIZES],
    # Inception and Xception blocks run parallel branches: the layer before a stage's first layer
    # is a branch, not the one tensor feeding the stage (tried: tests/test_backbone.py).
    keras_application("InceptionV3", "inception", "inception_v3", TF, 299,
                      KERAS_V1.format("inception_v3"), min_size=75, cut_at_one_tensor=False),
    keras_application("InceptionResNetV2", "inception", "inception_resnet_v2", TF, 299,
                      KERAS_V1.format("inception_resnet_v2"), min_size=75,
                      cut_at_one_tensor=False),
    keras_application("Xception", "xception", "xception", TF, 299,
                      KERAS_V1.format("xception"), min_size=71, cut_at_one_tensor=False),
    # NASNet's cells take the two previous cells' outputs: no single tensor separates stages.
    keras_application("NASNetMobile", "nasnet", "nasnet", TF, 224, "nasnet_mobile_no_top.h5",
                      cut_at_one_tensor=False),
    keras_application("NASNetLarge", "nasnet", "nasnet", TF, 331, "nasnet_large_no_top.h5",
                      cut_at_one_tensor=False),
    # The no-transfer floor: its features are the resized pixels scaled to [0, 1].
    BackboneSpec(name="pixels", build=pixels_model, preprocess=unchanged,
                 preprocessed_range=(0.0, 1.0), default_input_size=32, min_input_size=8,
                 family="pixels", preprocessing="none: rescaled to [0, 1] inside", stages=(),
                 features="flat", has_weights=False, trainable=False),
]

for _spec in SPECS:
    registry.BACKBONES.register(_spec.name, _spec)
