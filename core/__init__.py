"""adafocus.core: the Uni-AdaFocus method. Knows tensors, not files or domains."""
import os as _os

# PyTorch's CPU allocator puts large tensors on transparent huge pages when this is set before its first
# allocation, so fresh memory is faulted in 2 MB at a time rather than 4 KB: gathering the 128 glance frames of
# 8 paper-size clips (77 MB) took 16 ms instead of 34 ms on one thread (docs/notes/cpu-performance.md,
# "Huge pages"). THP_MEM_ALLOC_ENABLE=0 in the environment turns it off.
_os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
