"""Suite-wide settings.

The review app picks its inference engine from $ADAFOCUS_ENGINE (default auto = OpenVINO on the CPU). Tests
that run the app use torch, so that they do not spend their time exporting and compiling OpenVINO models; the
engine's results (equal to torch's) are tested in test_engine.py.
"""
import os

from adafocus.core._torchvision_compat import install_torchvision_shim

install_torchvision_shim()  # the test suite is an entry point like the CLI
os.environ.setdefault("ADAFOCUS_ENGINE", "torch")
