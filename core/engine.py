"""CPU inference engine for the encoders: OpenVINO runs the glance and local encoders, torch the rest.

Measured side by side on batches of 16 images (see docs/notes/cpu-performance.md, "Performance"), OpenVINO ran MobileNetV2 at 224
about 1.6-1.9x and ResNet-50 at 128 about 1.0-1.1x as fast as PyTorch's eager CPU kernels (batch norms
folded, channels-last), and ONNX Runtime was not faster than OpenVINO on either. The policies and the
classifier are a few percent of the cost and stay in torch, so ``UniAdaFocus.infer`` is unchanged: each
encoder's ``body`` is swapped for an ``EngineBody`` that takes and returns torch tensors.

- Export once per set of weights: the body is converted to OpenVINO IR with a dynamic batch (and dynamic
  spatial size, fixed per input size at compile time) and cached under ``cache_dir/<key>/`` where the key
  hashes the weights (a checkpoint's content), the precision-independent IR format, the OpenVINO version and
  ``FORMAT_VERSION``. A second load of the same checkpoint reads the IR and does not convert again.
- A fresh export is checked against torch on an example batch; any failure (unsupported op, conversion
  error, a mismatch) keeps the torch body and logs one line.
- ``fp32`` is ``prepare_for_inference``'s default (the command line's is ``auto``, below); ``bf16`` is offered only where the CPU has native bf16 support (OpenVINO reports
  "BF16" in its CPU capabilities), never emulated; ``int8`` quantizes the two encoders with nncf's
  post-training quantization, calibrated on clips of the data being scored, and is offered with its measured
  agreement with torch fp32 (``prediction_agreement``: top-1, largest probability difference, exit decisions).
- Every model is compiled by one process-wide ``openvino.Core`` under ``keep_signal_stack``: OpenVINO's CPU
  plugin otherwise leaves the thread's alternate signal stack in freed memory, and the process died with
  SIGSEGV when a DataLoader worker exited (see ``keep_signal_stack``).
- ``auto`` is OpenVINO on the CPU (when it is installed) and torch with AMP on CUDA. Training never uses it.
- ``--precision auto`` (see ``auto_candidate`` / ``auto_decision``): with OpenVINO on the CPU, bf16 where the
  CPU has AVX512-BF16 or AMX, else int8 where a measured agreement with torch fp32 allows it
  (``agreement_allows``: >= ``MIN_TOP1_AGREEMENT`` top-1 and >= ``MIN_SAME_EXITS`` identical exit decisions),
  else fp32; with torch (CUDA: AMP) fp32. A run's agreement is measured once per precision, engine version,
  CPU flags and checkpoint (``agreement_key``) and kept in its run folder (apps/runs/agreement.py).

OpenVINO is imported lazily: ``adafocus.core`` imports without it.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import shutil
import sys
import tempfile
import warnings
from contextlib import contextmanager, redirect_stdout
from pathlib import Path

import torch
from torch import nn

ENGINES = ("auto", "torch", "openvino")
PRECISIONS = ("fp32", "bf16", "int8", "int8-glance")
PRECISION_CHOICES = ("auto", *PRECISIONS)  # what --precision accepts
# What each precision runs the glance encoder, the local encoder and the spatial policy at. int8-glance: after an
# early exit the glance is most of the time left, and its depthwise convolutions gain more from int8 than from
# bf16; the local encoder and the policy stay bf16. int8 keeps the policy fp32 (it is not quantized).
ROLE_PRECISIONS = {
    "fp32": {"glance": "fp32", "local": "fp32", "policy": "fp32"},
    "bf16": {"glance": "bf16", "local": "bf16", "policy": "bf16"},
    "int8": {"glance": "int8", "local": "int8", "policy": "fp32"},
    "int8-glance": {"glance": "int8", "local": "bf16", "policy": "bf16"},
}
# --precision auto: a precision other than fp32 is used only when its predictions agree with torch fp32 this well
MIN_TOP1_AGREEMENT = 0.99  # share of samples with the same top-1 class (each at the exit it takes)
MIN_SAME_EXITS = 0.98      # share of samples taking the same exit under the run's exit policy
AGREEMENT_CLIPS = 64       # at most this many clips of the run's calibration split are compared
BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of native bf16
# The CPU features that decide which precision and kernels OpenVINO uses (part of an agreement's key)
PRECISION_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16", "amx_tile",
                   "amx_bf16", "amx_int8", "amx_fp16")
FORMAT_VERSION = 1
FP32_TOLERANCE = 1e-4  # largest |engine - torch| relative to the largest |torch| output accepted at export
CALIBRATION_IMAGES = 128  # int8: encoder inputs (frames, patches) spread over the calibration clips
_OV_PRECISION = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}  # int8: the quantized ops run int8, the rest f32

log = logging.getLogger("adafocus.engine")


def needs_calibration(precision: str) -> bool:
    """Whether ``precision`` quantizes an encoder to int8, which needs calibration clips (and nncf)."""
    return "int8" in ROLE_PRECISIONS.get(precision, {}).values()


def uses_bf16(precision: str) -> bool:
    """Whether ``precision`` runs a part of the model in bf16, which needs a CPU with native bf16."""
    return "bf16" in ROLE_PRECISIONS.get(precision, {}).values()


class EngineError(ValueError):
    """A bad engine or precision option; its message is one line for the user."""


def openvino_available() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def nncf_available() -> bool:
    try:
        import nncf  # noqa: F401
    except ImportError:
        return False
    return True


def bf16_supported() -> bool:
    """Whether this CPU runs bf16 natively (AVX512-BF16 / AMX), as OpenVINO reports it."""
    if not openvino_available():
        return False
    return "BF16" in cpu_core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def cpu_flags(cpuinfo: str | None = None) -> tuple[str, ...]:
    """The PRECISION_FLAGS this CPU has (from the text of /proc/cpuinfo; read when not given), in that order.
    Empty where /proc/cpuinfo does not exist."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            cpuinfo = ""
    found: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            found = set(value.split())
            break
    return tuple(flag for flag in PRECISION_FLAGS if flag in found)


def auto_candidate(engine: str, flags, *, bf16_available: bool = True, int8_available: bool = True) -> str:
    """The precision ``--precision auto`` tries for the resolved ``engine`` ("torch" or "openvino") on a CPU with
    ``flags``: fp32 with torch (on CUDA that is AMP, as always); with OpenVINO bf16 where the flags show native
    bf16 (and OpenVINO offers it: ``bf16_available``), else int8 (when nncf is there: ``int8_available``;
    it still needs a measured agreement, ``auto_decision``), else fp32."""
    if engine != "openvino":
        return "fp32"
    if bf16_available and any(flag in flags for flag in BF16_FLAGS):
        return "bf16"
    return "int8" if int8_available else "fp32"


def agreement_allows(agreement: dict | None) -> bool:
    """Whether a measured agreement with torch fp32 (``prediction_agreement``) is good enough to use that
    precision: top-1 agreement >= MIN_TOP1_AGREEMENT and identical exit decisions on >= MIN_SAME_EXITS."""
    if not agreement or not agreement.get("clips"):
        return False
    return (float(agreement["top1_agreement"]) >= MIN_TOP1_AGREEMENT
            and float(agreement.get("same_exits", 0.0)) >= MIN_SAME_EXITS)


def auto_decision(candidate: str, agreement: dict | None) -> str:
    """The precision ``--precision auto`` uses, given the candidate (``auto_candidate``) and its measured
    agreement (None: not measured, e.g. the run's calibration data is gone): fp32 stays fp32; bf16 (chosen by
    the CPU) is kept unless a measured agreement fails the thresholds; int8 needs a measured agreement that
    passes them. Anything refused falls back to fp32."""
    if candidate == "fp32":
        return "fp32"
    if agreement is None:
        return "bf16" if candidate == "bf16" else "fp32"
    return candidate if agreement_allows(agreement) else "fp32"


def engine_version(precision: str) -> str:
    """The software an agreement at ``precision`` depends on, e.g. "openvino 2026.4.1" (int8: + nncf)."""
    import openvino as ov

    version = f"openvino {ov.__version__.split('-')[0]}"
    if needs_calibration(precision):
        import nncf

        version += f", nncf {nncf.__version__}"
    return version


def agreement_key(precision: str, version: str, flags, checkpoint: str) -> str:
    """The key a measured agreement is stored under: precision, engine version, CPU flags and the checkpoint's
    content digest, e.g. "bf16 | openvino 2026.4.1 | avx2,fma,... | 3f2a..."."""
    return " | ".join([precision, version, ",".join(flags) or "no-flags", checkpoint])


class _SignalStack(ctypes.Structure):  # stack_t of <signal.h>
    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]


@contextmanager
def keep_signal_stack():
    """Give the calling thread back its alternate signal stack after the block.

    OpenVINO's CPU plugin (2026.4) installs an alternate signal stack of its own on the thread that loads it
    and, when it is destroyed, puts back the one it replaced; plugins destroyed in another order than they were
    created leave the thread's alternate stack in freed memory. The next signal handled on that stack
    (SIGCHLD, which torch's DataLoader catches when a worker process exits, and Python installs its handlers
    with SA_ONSTACK) then kills the process with a kernel-sent SIGSEGV inside ``waitpid``. With the thread's
    own stack restored, no signal is ever delivered onto the plugin's."""
    libc = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
    saved = _SignalStack()
    if libc is None or libc.sigaltstack(None, ctypes.byref(saved)) != 0:
        yield
        return
    try:
        yield
    finally:
        libc.sigaltstack(ctypes.byref(saved), None)


@functools.lru_cache(maxsize=1)
def cpu_core():
    """The process's one ``openvino.Core``, its CPU plugin loaded under ``keep_signal_stack`` and kept
    for the life of the process (one plugin, one set of threads, however many models are compiled)."""
    import openvino as ov

    core = ov.Core()
    with keep_signal_stack():
        core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    return core


def compile_for_cpu(model, config: dict):
    """``cpu_core().compile_model(model, "CPU", config)``, leaving the thread's signal stack as it was."""
    with keep_signal_stack():
        return cpu_core().compile_model(model, "CPU", config)


def resolve_engine(engine: str, device: torch.device | str, precision: str = "fp32") -> str:
    """The engine that ``engine`` stands for on ``device``: "torch" or "openvino". Raises EngineError.
    ``precision="auto"`` is accepted on every engine (``resolve_precision``)."""
    device = torch.device(device)
    if engine not in ENGINES:
        raise EngineError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    if precision not in PRECISION_CHOICES:
        raise EngineError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISION_CHOICES)}")
    if engine == "auto":
        engine = "openvino" if device.type == "cpu" and openvino_available() else "torch"
    if engine == "openvino":
        if device.type != "cpu":
            raise EngineError(f"the openvino engine runs on the CPU, not on {device}; use --engine torch or auto")
        if not openvino_available():
            raise EngineError("the openvino engine needs the openvino package (pip install openvino)")
    if needs_calibration(precision):
        if engine != "openvino":
            raise EngineError(f"--precision {precision} is offered with the openvino engine on a CPU")
        if not nncf_available():
            raise EngineError(f"--precision {precision} needs the nncf package (pip install nncf)")
    if uses_bf16(precision):
        if engine != "openvino":
            raise EngineError(f"--precision {precision} is offered with the openvino engine on a CPU "
                              "(on CUDA, torch runs with AMP already)")
        if not bf16_supported():
            raise EngineError(f"this CPU has no native bf16 support (no AVX512-BF16 / AMX), which --precision "
                              f"{precision} needs; use --precision fp32" + (" or int8" if precision != "bf16" else ""))
    return engine


def resolve_precision(engine: str, device: torch.device | str, precision: str = "auto", *,
                      allow_int8: bool = False) -> str:
    """The precision ``precision`` stands for where no run's agreement is at hand: explicit ones as they are;
    auto by the CPU alone (``auto_candidate``): bf16 where the CPU has it, else fp32, or int8 with
    ``allow_int8`` (``bench speed``, which prints int8's agreement on its timed batch). A run's own choice,
    with its measured agreement, is apps/runs/agreement.py's. Raises EngineError."""
    used = resolve_engine(engine, device, precision)
    if precision != "auto":
        return precision
    return auto_candidate(used, cpu_flags(), bf16_available=used == "openvino" and bf16_supported(),
                          int8_available=allow_int8 and nncf_available())


def default_cache_dir() -> Path:
    """``$ADAFOCUS_ENGINE_CACHE``, else ``$XDG_CACHE_HOME/adafocus/engine`` (``~/.cache/adafocus/engine``)."""
    if os.environ.get("ADAFOCUS_ENGINE_CACHE"):
        return Path(os.environ["ADAFOCUS_ENGINE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "adafocus" / "engine"


def weights_key(body: nn.Module, in_channels: int) -> str:
    """Hash of everything the exported IR depends on: the module's structure and weights, the input
    channels, the OpenVINO version and this module's format version."""
    import openvino as ov

    digest = hashlib.sha256(f"{FORMAT_VERSION}|{ov.__version__}|{in_channels}|{body!r}".encode())
    for name, tensor in body.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:32]


def export_ir(body: nn.Module, example: torch.Tensor, cache_dir: Path) -> tuple[Path, bool]:
    """(path of the OpenVINO IR of ``body``, whether it was converted now rather than read from the cache).

    The IR has a dynamic batch and dynamic sizes after the channels (``example`` is ``[N, C, ...]``: images,
    or the spatial policy's ``[N, C, T, h, w]``) and keeps fp32 weights; it is written to a temporary folder
    and renamed into place, so a crash never leaves a half-written cache entry."""
    import openvino as ov

    target = Path(cache_dir) / weights_key(body, example.shape[1]) / "body.xml"
    if target.exists():
        return target, False
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on a body it converts correctly
        converted = ov.convert_model(body.eval(), example_input=example,
                                     input=[ov.PartialShape([-1, example.shape[1], *[-1] * (example.dim() - 2)])])
    _save_atomically(converted, target)
    return target, True


def _save_atomically(model, target: Path) -> None:
    """Save an OpenVINO model as ``target`` (``<folder>/body.xml`` + ``.bin``): written to a temporary folder
    and renamed into place, so a crash never leaves a half-written cache entry."""
    import openvino as ov

    target.parent.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=target.parent.parent))
    try:
        ov.save_model(model, staging / target.name, compress_to_fp16=False)
        try:
            staging.rename(target.parent)
        except OSError:  # another process exported the same weights meanwhile
            if not target.exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def quantize_ir(ir_path: Path, samples: list[torch.Tensor]) -> tuple[Path, bool]:
    """(path of the INT8 version of the fp32 IR at ``ir_path``, whether it was quantized now): nncf's
    post-training quantization, calibrated on ``CALIBRATION_IMAGES`` of ``samples`` (the body's inputs on
    calibration clips), evenly spread. Cached beside the fp32 IR, keyed by those inputs."""
    images = torch.cat([sample.detach().float() for sample in samples])
    images = images[torch.linspace(0, len(images) - 1, min(len(images), CALIBRATION_IMAGES)).round().long()]
    digest = hashlib.sha256(images.contiguous().numpy().tobytes())
    target = ir_path.parent.with_name(f"{ir_path.parent.name}-int8-{digest.hexdigest()[:16]}") / "body.xml"
    if target.exists():
        return target, False
    import nncf

    logging.getLogger("nncf").setLevel(logging.ERROR)
    # one image per item: nncf keeps every layer's output of an item while it collects statistics
    with warnings.catch_warnings(), redirect_stdout(sys.stderr):  # nncf's progress bars: off a --json stdout
        warnings.simplefilter("ignore")
        quantized = nncf.quantize(cpu_core().read_model(ir_path),
                                  nncf.Dataset([image[None].contiguous().numpy() for image in images]),
                                  subset_size=len(images), fast_bias_correction=True)
    _save_atomically(quantized, target)
    return target, True


class NormalizedInput(nn.Module):
    """``body((x - mean) / std)``: an encoder body with the frame normalisation in front, exported as one graph,
    so the engine normalises while it reads the frames instead of torch writing a normalised copy of them first
    (MobileNetV2 at 224, 128 frames, bf16, one thread: 281 ms against 373 ms; see docs/notes/cpu-performance.md).
    ``mean`` / ``std`` are ``[1, C, 1, 1]``; the encoder then takes frames in [0, 1] (Backbone.normalizes_input)."""

    normalizes_input = True

    def __init__(self, body: nn.Module, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.body = body
        self.register_buffer("mean", mean.detach().clone())
        self.register_buffer("std", std.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body((x - self.mean) / self.std)


class EngineBody(nn.Module):
    """Stands in for a backbone's (or the spatial policy's) body: ``[N, C, ...]`` (torch) -> the body's output
    (torch), computed by OpenVINO. One compiled model per input size and thread count (the thread count is read at call time,
    so ``torch.set_num_threads`` governs the engine too).

    The torch body stays as ``torch_body``: the FLOP counter (``adafocus.core.flops``) cannot see inside
    OpenVINO, so while it counts, the call runs in torch (same weights, same MACs)."""

    def __init__(self, ir_path: Path, torch_body: nn.Module, precision: str = "fp32"):
        super().__init__()
        self.ir_path, self.precision, self.torch_body = Path(ir_path), precision, torch_body
        self.normalizes_input = bool(getattr(torch_body, "normalizes_input", False))
        self._compiled: dict[tuple, object] = {}

    def compiled(self, input_shape: tuple[int, ...], threads: int):
        key = (tuple(input_shape), threads)
        if key not in self._compiled:
            import openvino as ov

            model = cpu_core().read_model(self.ir_path)
            model.reshape({model.input(0): ov.PartialShape([-1, *input_shape])})
            self._compiled[key] = compile_for_cpu(model, {
                "INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY",
                "INFERENCE_PRECISION_HINT": _OV_PRECISION[self.precision]})
        return self._compiled[key]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _counting_flops():
            return self.torch_body(x)
        compiled = self.compiled(tuple(x.shape[1:]), torch.get_num_threads())
        # share_inputs: OpenVINO reads the tensor's memory during this synchronous call instead of copying it
        output = compiled(x.detach().float().contiguous().numpy(), share_inputs=True, share_outputs=False)[0]
        return torch.from_numpy(output)

    def extra_repr(self) -> str:
        return f"openvino {self.precision}, {self.ir_path.parent.name}"


def _counting_flops() -> bool:
    from torch.utils._python_dispatch import _get_current_dispatch_mode_stack
    from torch.utils.flop_counter import FlopCounterMode

    return any(isinstance(mode, FlopCounterMode) or type(mode).__name__ == "_FlopCounterMode"
               for mode in _get_current_dispatch_mode_stack())


def relative_error(output: torch.Tensor, reference: torch.Tensor) -> float:
    """Largest absolute difference relative to the largest absolute reference value."""
    scale = reference.abs().max().clamp_min(1e-12)
    return float((output.float() - reference.float()).abs().max() / scale)


def engine_body(body: nn.Module, example: torch.Tensor, *, cache_dir: Path, precision: str = "fp32",
                name: str = "encoder", calibration: list[torch.Tensor] | None = None) -> nn.Module:
    """An ``EngineBody`` for ``body`` (exported now, or read from the cache), or ``body`` itself when export
    fails or the exported model, run at fp32, disagrees with torch on ``example`` (one warning line either way).
    bf16 and int8 are not held to a tolerance per body: bf16 MobileNetV2 with ImageNet weights differs from
    fp32 by 0.23 of its largest feature on real frames, yet predicts alike; a precision is judged on whole
    predictions (``prediction_agreement``).
    ``precision="int8"`` quantizes the export on ``calibration`` (the body's inputs); its agreement is
    measured on whole predictions (``prediction_agreement``), not per body."""
    try:
        ir_path, fresh = export_ir(body, example, cache_dir)
        if fresh:  # the conversion itself, checked at full precision; a lower one is judged by its predictions
            with torch.no_grad():
                error = relative_error(EngineBody(ir_path, body, "fp32")(example), body(example))
            if not error <= FP32_TOLERANCE:
                shutil.rmtree(ir_path.parent, ignore_errors=True)
                raise RuntimeError(f"its output differs from torch by {error:.1e} (relative)")
        if precision == "int8":
            ir_path, _ = quantize_ir(ir_path, calibration)
        return EngineBody(ir_path, body, precision)
    except Exception as error:  # noqa: BLE001 - any export problem means: keep torch
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        log.warning("openvino export of the %s failed (%s); running it in torch", name, message[:200])
        return body


def _encoder_input(encoder: nn.Module, size: int, batch: int = 3) -> torch.Tensor:
    first_conv = next(m for m in encoder.modules() if isinstance(m, nn.Conv2d))
    return torch.rand(batch, first_conv.in_channels, size, size, generator=torch.Generator().manual_seed(0))


def _exportable(encoder: nn.Module) -> bool:
    """Frame encoders only: clip backbones (TSM, X3D) mix frames inside the batch dimension, which a
    dynamic-batch export cannot be trusted to keep."""
    return getattr(encoder, "frames_per_clip", 1) == 1 and all(p.dim() != 5 for p in encoder.parameters())


def prepare_for_inference(model: nn.Module, *, engine: str = "auto", precision: str = "fp32",
                          cache_dir: Path | str | None = None, calibration: torch.Tensor | None = None) -> str:
    """Make ``model`` (UniAdaFocus or StaticBaseline, already on its device, weights loaded) ready for
    inference with ``engine`` and return the engine it runs: "torch" (batch norms folded, channels-last, see
    ``optimize_for_inference``) or "openvino" (both frame encoders exported; an encoder whose export fails
    stays in torch, optimised, with one warning line). Raises EngineError for an option this machine lacks.
    ``precision="auto"`` here (no run to measure on) is bf16 where the CPU has it, else fp32 (``resolve_precision``).
    ``precision="int8"`` needs ``calibration`` clips (a few batches of the data to be scored): the encoders
    are quantized on their inputs from those clips; the spatial policy stays fp32. ``"int8-glance"``
    quantizes the glance encoder alone and runs the rest in bf16 (``ROLE_PRECISIONS``)."""
    from adafocus.core.backbones import cpu_micro_batch
    from adafocus.core.model import encoder_in_channels

    device = model.pixel_mean.device
    precision = resolve_precision(engine, device, precision)  # "auto" without a run: bf16 or fp32 by the CPU
    chosen = resolve_engine(engine, device, precision)
    if chosen == "torch":
        model.optimize_for_inference()
        return chosen
    if needs_calibration(precision) and calibration is None:
        raise EngineError(f"--precision {precision} needs calibration clips")
    model.eval()
    if hasattr(model, "exit_costs"):
        model.exit_costs()  # counted (and kept) before the swap, on torch modules
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    role_precisions = ROLE_PRECISIONS[precision]
    _export_spatial_policy(model, cache_dir, role_precisions["policy"])
    config = model.config
    sizes = {"glance": config.glance_size or config.frame_size, "local": config.patch_size}
    plain_bodies = {}
    for role in sizes:  # the normalisation goes into the graph of every encoder whose input is the frames alone
        encoder = getattr(model, f"{role}_encoder")
        if _exportable(encoder):
            plain_bodies[role] = encoder.body
            if encoder_in_channels(encoder) == model.pixel_mean.shape[1]:
                encoder.body = NormalizedInput(encoder.body, model.pixel_mean, model.pixel_std)
        else:
            log.warning("the %s encoder %s mixes frames; it runs in torch", role, encoder.name)
    samples = encoder_inputs(model, calibration) if needs_calibration(precision) else {}  # what each body reads
    for role, size in sizes.items():
        encoder = getattr(model, f"{role}_encoder")
        if role in plain_bodies:
            exported = engine_body(encoder.body, _encoder_input(encoder, size), cache_dir=cache_dir,
                                   precision=role_precisions[role], name=f"{role} encoder {encoder.name}",
                                   calibration=samples.get(role))
            encoder.body = exported if isinstance(exported, EngineBody) else plain_bodies[role]
        if isinstance(encoder.body, EngineBody):
            encoder.channels_last, encoder.micro_batch = False, cpu_micro_batch(device)
        else:
            encoder.optimize_for_inference(cpu_micro_batch(device))
    return chosen


def encoder_inputs(model: nn.Module, clips: torch.Tensor, batch: int = 16) -> dict[str, list[torch.Tensor]]:
    """{"glance": [...], "local": [...]}: what each encoder's body receives while ``model`` (still in torch)
    runs ``clips`` without exits, in batches of ``batch`` clips: the calibration set for quantization."""
    seen: dict[str, list[torch.Tensor]] = {"glance": [], "local": []}
    hooks = [getattr(model, f"{role}_encoder").body.register_forward_pre_hook(
        lambda module, args, role=role: seen[role].append(args[0].detach().float().cpu().clone()))
        for role in seen]
    try:
        with torch.inference_mode():
            for part in clips.split(batch):
                model.infer(part) if hasattr(model, "infer") else model(part)
    finally:
        for hook in hooks:
            hook.remove()
    return seen


def all_exit_logits(model: nn.Module, clips: torch.Tensor, batch: int = 16) -> torch.Tensor:
    """Every exit's logits ``[N, K, C]`` (float, CPU) of ``model.infer`` on ``clips`` without early exit."""
    with torch.inference_mode():
        return torch.cat([model.infer(part).logits.float().cpu() for part in clips.split(batch)])


def logits_agreement(reference: torch.Tensor, engine: torch.Tensor, policy=None) -> dict:
    """``prediction_agreement`` of two models' ``all_exit_logits`` (reference: torch fp32)."""
    last = torch.full((len(reference),), reference.shape[1] - 1, dtype=torch.long)
    ref_exit = policy.assign(reference) if policy is not None else last
    eng_exit = policy.assign(engine) if policy is not None else last
    rows = torch.arange(len(reference))
    ref_top1, eng_top1 = reference[rows, ref_exit].argmax(-1), engine[rows, eng_exit].argmax(-1)
    prob_diff = (reference.softmax(-1) - engine.softmax(-1)).abs().nan_to_num(0.0)
    same_exits = float((ref_exit == eng_exit).float().mean())
    agreement = {"clips": len(reference), "top1_agreement": float((ref_top1 == eng_top1).float().mean()),
                 "max_prob_diff": float(prob_diff.max()) if prob_diff.numel() else 0.0, "same_exits": same_exits}
    if policy is not None:
        agreement.update(exits_changed=1.0 - same_exits, largest_exit_change=int((ref_exit - eng_exit).abs().max()))
    return agreement


def prediction_agreement(reference: nn.Module, engine: nn.Module, clips: torch.Tensor, policy=None,
                         batch: int = 16) -> dict:
    """How far ``engine``'s predictions are from ``reference``'s (torch fp32) on ``clips``:

    - ``top1_agreement``: share of samples whose predicted class is the same, each model's taken at the exit
      that model's logits choose under the exit ``policy`` (None: everyone runs to the last exit);
    - ``max_prob_diff``: the largest difference of any class probability at any exit;
    - ``same_exits``: share of samples that take the same exit under ``policy`` (1.0 without a policy);
    - with a policy also ``exits_changed`` (1 - same_exits) and ``largest_exit_change`` (steps).

    Both models run every clip to the last exit and the exits are assigned from all exits' logits
    (``ExitPolicy.assign``): what early-exit inference decides step by step, sample by sample."""
    return logits_agreement(all_exit_logits(reference, clips, batch), all_exit_logits(engine, clips, batch), policy)


def format_agreement(agreement: dict) -> str:
    """One line, e.g. "top-1 agreement 100% on 64 clips, largest probability difference 0.0031, identical exits
    98% (largest exit change 1 step)"."""
    line = f"top-1 agreement {agreement['top1_agreement']:.0%} on {agreement['clips']} clips"
    if "max_prob_diff" in agreement:
        line += f", largest probability difference {agreement['max_prob_diff']:.2g}"
    if "same_exits" in agreement:
        line += f", identical exits {agreement['same_exits']:.0%}"
    if "largest_exit_change" in agreement:
        steps = agreement["largest_exit_change"]
        line += f" (largest exit change {steps} step{'' if steps == 1 else 's'})"
    return line


def _export_spatial_policy(model: nn.Module, cache_dir: Path, precision: str) -> None:
    """The learned spatial policy's 3D convolutions over all glance maps (0.8 GMACs per video in the paper's
    setting, a sixth of the glance) run about 1.7x as fast in OpenVINO; the AdaFocusV1 actor-critic stays."""
    from adafocus.core.policy import SpatialPolicy

    policy = getattr(model, "spatial_policy", None)
    if not isinstance(policy, SpatialPolicy):
        return
    map_h, map_w = model.glance_map_size
    example = torch.rand(3, model.glance_encoder.feature_dim, model.config.num_glance, map_h, map_w,
                         generator=torch.Generator().manual_seed(0))
    policy.body = engine_body(policy.body, example, cache_dir=cache_dir, precision=precision, name="spatial policy")


def engine_summary(model: nn.Module) -> str:
    """Which engine runs each exported part, e.g. "glance: openvino fp32, local: torch, spatial policy: torch"."""
    parts = {"glance": model.glance_encoder, "local": model.local_encoder}
    if hasattr(getattr(model, "spatial_policy", None), "body"):
        parts["spatial policy"] = model.spatial_policy
    return ", ".join(f"{name}: " + (f"openvino {part.body.precision}" if isinstance(part.body, EngineBody) else "torch")
                     for name, part in parts.items())


ENV_ENGINE, ENV_PRECISION = "ADAFOCUS_ENGINE", "ADAFOCUS_PRECISION"


def prepare_from_environment(model: nn.Module) -> str:
    """``prepare_for_inference`` with the engine and precision in ``$ADAFOCUS_ENGINE`` / ``$ADAFOCUS_PRECISION``
    (default auto / fp32): how processes started by a command (the Streamlit review app) get its ``--engine``."""
    return prepare_for_inference(model, engine=os.environ.get(ENV_ENGINE) or "auto",
                                 precision=os.environ.get(ENV_PRECISION) or "fp32")

