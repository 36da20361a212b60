"""adafocus.core: the Uni-AdaFocus method. Knows tensors, not files or domains."""
