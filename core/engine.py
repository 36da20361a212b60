"""CPU inference engine for the encoders: OpenVINO runs the glance and local encoders, torch the rest.

Measured side by side on batches of 16 images (see README, "Performance"), OpenVINO ran MobileNetV2 at 224
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
- ``fp32`` is the default; ``bf16`` is offered only where the CPU has native bf16 support (OpenVINO reports
  "BF16" in its CPU capabilities), never emulated.
- ``auto`` is OpenVINO on the CPU (when it is installed) and torch with AMP on CUDA. Training never uses it.

OpenVINO is imported lazily: ``adafocus.core`` imports without it.
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

ENGINES = ("auto", "torch", "openvino")
PRECISIONS = ("fp32", "bf16")
FORMAT_VERSION = 1
FP32_TOLERANCE = 1e-4  # largest |engine - torch| relative to the largest |torch| output accepted at export
_OV_PRECISION = {"fp32": "f32", "bf16": "bf16"}

log = logging.getLogger("adafocus.engine")


class EngineError(ValueError):
    """A bad engine or precision option; its message is one line for the user."""


def openvino_available() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def bf16_supported() -> bool:
    """Whether this CPU runs bf16 natively (AVX512-BF16 / AMX), as OpenVINO reports it."""
    if not openvino_available():
        return False
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def resolve_engine(engine: str, device: torch.device | str, precision: str = "fp32") -> str:
    """The engine that ``engine`` stands for on ``device``: "torch" or "openvino". Raises EngineError."""
    device = torch.device(device)
    if engine not in ENGINES:
        raise EngineError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    if precision not in PRECISIONS:
        raise EngineError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if engine == "auto":
        engine = "openvino" if device.type == "cpu" and openvino_available() else "torch"
    if engine == "openvino":
        if device.type != "cpu":
            raise EngineError(f"the openvino engine runs on the CPU, not on {device}; use --engine torch or auto")
        if not openvino_available():
            raise EngineError("the openvino engine needs the openvino package (pip install openvino)")
    if precision == "bf16":
        if engine != "openvino":
            raise EngineError("--precision bf16 is offered with the openvino engine on a CPU "
                              "(on CUDA, torch runs with AMP already)")
        if not bf16_supported():
            raise EngineError("this CPU has no native bf16 support (no AVX512-BF16 / AMX); use --precision fp32")
    return engine


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
    target.parent.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=target.parent.parent))
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tracer's notes on a body it converts correctly
            converted = ov.convert_model(body.eval(), example_input=example,
                                         input=[ov.PartialShape([-1, example.shape[1], *[-1] * (example.dim() - 2)])])
        ov.save_model(converted, staging / "body.xml", compress_to_fp16=False)
        try:
            staging.rename(target.parent)
        except OSError:  # another process exported the same weights meanwhile
            if not target.exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target, True


class EngineBody(nn.Module):
    """Stands in for a backbone's (or the spatial policy's) body: ``[N, C, ...]`` (torch) -> the body's output
    (torch), computed by OpenVINO. One compiled model per input size and thread count (the thread count is read at call time,
    so ``torch.set_num_threads`` governs the engine too).

    The torch body stays as ``torch_body``: the FLOP counter (``adafocus.core.flops``) cannot see inside
    OpenVINO, so while it counts, the call runs in torch (same weights, same MACs)."""

    def __init__(self, ir_path: Path, torch_body: nn.Module, precision: str = "fp32"):
        super().__init__()
        self.ir_path, self.precision, self.torch_body = Path(ir_path), precision, torch_body
        self._compiled: dict[tuple, object] = {}

    def compiled(self, input_shape: tuple[int, ...], threads: int):
        key = (tuple(input_shape), threads)
        if key not in self._compiled:
            import openvino as ov

            core = ov.Core()
            model = core.read_model(self.ir_path)
            model.reshape({model.input(0): ov.PartialShape([-1, *input_shape])})
            self._compiled[key] = core.compile_model(model, "CPU", {
                "INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY",
                "INFERENCE_PRECISION_HINT": _OV_PRECISION[self.precision]})
        return self._compiled[key]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _counting_flops():
            return self.torch_body(x)
        compiled = self.compiled(tuple(x.shape[1:]), torch.get_num_threads())
        output = compiled(x.detach().float().contiguous().numpy(), share_inputs=False, share_outputs=False)[0]
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
                name: str = "encoder") -> nn.Module:
    """An ``EngineBody`` for ``body`` (exported now, or read from the cache), or ``body`` itself when export
    fails or the exported model disagrees with torch on ``example`` (one warning line either way)."""
    try:
        ir_path, fresh = export_ir(body, example, cache_dir)
        engine = EngineBody(ir_path, body, precision)
        if fresh:
            with torch.no_grad():
                error = relative_error(engine(example), body(example))
            tolerance = FP32_TOLERANCE if precision == "fp32" else 5e-2
            if not error <= tolerance:
                shutil.rmtree(ir_path.parent, ignore_errors=True)
                raise RuntimeError(f"its output differs from torch by {error:.1e} (relative)")
        return engine
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
                          cache_dir: Path | str | None = None) -> str:
    """Make ``model`` (UniAdaFocus or StaticBaseline, already on its device, weights loaded) ready for
    inference with ``engine`` and return the engine it runs: "torch" (batch norms folded, channels-last, see
    ``optimize_for_inference``) or "openvino" (both frame encoders exported; an encoder whose export fails
    stays in torch, optimised, with one warning line). Raises EngineError for an option this machine lacks."""
    from adafocus.core.backbones import cpu_micro_batch

    device = model.pixel_mean.device
    chosen = resolve_engine(engine, device, precision)
    if chosen == "torch":
        model.optimize_for_inference()
        return chosen
    model.eval()
    if hasattr(model, "exit_costs"):
        model.exit_costs()  # counted (and kept) before the swap, on torch modules
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    _export_spatial_policy(model, cache_dir, precision)
    config = model.config
    sizes = {"glance": config.glance_size or config.frame_size, "local": config.patch_size}
    for role, size in sizes.items():
        encoder = getattr(model, f"{role}_encoder")
        if _exportable(encoder):
            encoder.body = engine_body(encoder.body, _encoder_input(encoder, size), cache_dir=cache_dir,
                                       precision=precision, name=f"{role} encoder {encoder.name}")
        else:
            log.warning("the %s encoder %s mixes frames; it runs in torch", role, encoder.name)
        if isinstance(encoder.body, EngineBody):
            encoder.channels_last, encoder.micro_batch = False, cpu_micro_batch(device)
        else:
            encoder.optimize_for_inference(cpu_micro_batch(device))
    return chosen


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


def engine_with_workers(engine: str, device: torch.device | str, precision: str, workers: int) -> str:
    """The engine for scoring, which decodes in ``workers`` DataLoader processes. A process that had run
    OpenVINO crashed (segmentation fault, OpenVINO 2026.4 with torch 2.13, no Python traceback) once worker
    or child processes came and went, so until that is understood scoring's ``auto`` is torch (+ AMP on
    CUDA) and ``openvino`` is refused with decoding workers; ``--engine openvino --workers 0`` runs it."""
    chosen = resolve_engine(engine, device, precision)
    if chosen != "openvino" or engine == "auto" or workers == 0:
        return "torch" if engine == "auto" else chosen
    raise EngineError("--engine openvino cannot run with decoding worker processes yet (a known crash); "
                      "add --workers 0")
