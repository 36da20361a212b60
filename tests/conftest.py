"""Suite-wide settings.

The review app picks its inference engine from $ADAFOCUS_ENGINE (default auto = OpenVINO on the CPU). Tests
that run the app in this process use torch, so that no OpenVINO runtime is loaded into a pytest process that
later forks DataLoader workers (see the Makefile's ENGINE_TESTS); engine results are tested in test_engine.py.
"""
import os

os.environ.setdefault("ADAFOCUS_ENGINE", "torch")
