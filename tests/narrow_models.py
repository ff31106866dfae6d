"""Every registered architecture at reduced widths (same layers and layout, fewer channels),
with an input shape small enough for CPU tests."""

NARROW_RESNET = (8, 16, 32, 64)
NARROW_VGG = (16, 16, 32, 32, 64, 64)
NARROW_REACTNET = dict(stem_width=4, block_widths=(8, 16, 16, 32, 32) + (64,) * 6 + (128,) * 2)

# case -> (registered name, kwargs of the narrow test model, input shape)
CASES = {
    "small_cnn": ("small_cnn", {}, (2, 8, 8, 1)),
    "resnet20": ("resnet20", {}, (2, 32, 32, 3)),
    "resnet18_cifar": ("resnet18_cifar", {"widths": NARROW_RESNET}, (2, 32, 32, 3)),
    "vgg_small": ("vgg_small", {"widths": NARROW_VGG}, (2, 32, 32, 3)),
    "resnet18": ("resnet18", {"widths": NARROW_RESNET, "react": True}, (2, 64, 64, 3)),
    "resnet34": ("resnet34", {"widths": NARROW_RESNET, "react": False}, (2, 64, 64, 3)),
    "reactnet_a": ("reactnet_a", NARROW_REACTNET, (2, 64, 64, 3)),
}

# XLA:CPU compiles every fusion through LLVM, seconds per model on a 2-core machine; test
# models run once on tiny inputs, so the cheapest code generation is best (about 3x less
# compile time than the defaults).
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True,
                "xla_cpu_use_fusion_emitters": False}
