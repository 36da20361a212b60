"""adafocus.core: the Uni-AdaFocus method. Knows tensors, not files or domains."""
from . import _torchvision_compat  # noqa: F401  (must run before torchvision is imported)
