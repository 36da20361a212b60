"""Suite-wide settings.

The review app picks its inference engine from $ADAFOCUS_ENGINE (default auto = OpenVINO on the CPU). Tests
that run the app use torch, so that they do not spend their time exporting and compiling OpenVINO models; the
engine's results (equal to torch's) are tested in test_engine.py.
"""
import os

from adafocus.core._torchvision_compat import install_torchvision_shim

install_torchvision_shim()  # the test suite is an entry point like the CLI
os.environ.setdefault("ADAFOCUS_ENGINE", "torch")
# `--precision` defaults to auto (bf16 where the CPU has it, else int8 where a run's measured agreement allows
# it): on a bf16 CPU every command-line test would then measure and score in bf16, and tests that compare
# scores exactly with fp32 numbers would depend on the CPU. The suite keeps fp32 unless a test asks for auto
# (tests/test_precision_auto.py).
os.environ.setdefault("ADAFOCUS_PRECISION", "fp32")
