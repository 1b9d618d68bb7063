"""The policy artifact: one ``.safetensors`` file holding the weights and, in its header, the metadata.

Layout (the safetensors format, read and written here with the standard library and torch only, so a bare GPU
box with torch can load it; ``safetensors.torch.load_file`` reads our files and we read its files)::

    u64 little-endian N | N bytes of JSON header | raw tensor bytes
    header = {"<tensor>": {"dtype": "F32", "shape": [...], "data_offsets": [begin, end]}, ...,
              "__metadata__": {"fleetloop.artifact": "<ArtifactMetadata as JSON>"}}

``load_artifact`` reads only the header first and refuses, before a single weight byte is read: a different input
schema, an unknown architecture or artifact format, and tensor names / shapes / dtypes that do not match the
architecture. Then it reads the weights and refuses NaN / Inf values, naming the tensors. ``save_artifact`` writes
to a temporary file in the same directory and ``os.replace``s it, so a reader never sees half a file.

Errors (all ``fleetloop.platform.errors.DataError``, CLI exit 5)::

    ArtifactError                 the artifact cannot be used
    ├── CorruptArtifactError      unreadable, truncated, or tensors that do not fit the architecture
    ├── SchemaMismatchError       input schema, architecture or artifact format version differs from what we run
    └── NonFiniteWeightsError     NaN or Inf weights (``.tensors`` names them)
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from fleetloop.edge_agent.features import INPUT_SCHEMA_VERSION
from fleetloop.edge_agent.policy import ARCHITECTURE, FusionPolicy, build_policy, nonfinite_parameters
from fleetloop.platform.atomic import write_bytes_atomic
from fleetloop.platform.errors import DataError

__all__ = [
    "ARTIFACT_FORMAT_VERSION",
    "ArtifactError",
    "ArtifactMetadata",
    "CorruptArtifactError",
    "LoadedPolicy",
    "NonFiniteWeightsError",
    "SchemaMismatchError",
    "content_hash",
    "hash_tensors",
    "load_artifact",
    "read_metadata",
    "save_artifact",
]

ARTIFACT_FORMAT_VERSION = 1
METADATA_KEY = "fleetloop.artifact"
MAX_HEADER_BYTES = 1 << 20  # a policy header is a few kB; anything larger is not ours
_DTYPES: dict[str, torch.dtype] = {
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F64": torch.float64,
}
_DTYPE_NAMES = {v: k for k, v in _DTYPES.items()}


class ArtifactError(DataError):
    """The policy artifact cannot be used."""


class CorruptArtifactError(ArtifactError):
    """The file is unreadable, truncated, or its tensors do not fit the architecture it names."""


class SchemaMismatchError(ArtifactError):
    """The artifact was built for another input schema, architecture or artifact format than this vehicle runs."""


class NonFiniteWeightsError(ArtifactError):
    """Weights contain NaN or Inf; ``tensors`` lists the affected tensor names."""

    def __init__(self, message: str, tensors: Sequence[str]) -> None:
        super().__init__(message)
        self.tensors = list(tensors)


@dataclass(frozen=True)
class ArtifactMetadata:
    """What an artifact says about itself (stored as JSON in the safetensors header)."""

    architecture: str
    """Name of the model class layout (``policy.ARCHITECTURE``)."""
    hyperparameters: dict[str, Any]
    """``PolicyConfig.to_dict()`` of the model."""
    input_schema_version: str = INPUT_SCHEMA_VERSION
    """Feature layout the model reads (``features.INPUT_SCHEMA_VERSION``)."""
    model_version: str | None = None
    """Registry version; None until registered."""
    parent_version: str | None = None
    """Registry version this one was fine-tuned from (None for the initial model)."""
    training_data_hashes: tuple[str, ...] = ()
    """Content hashes (``hash_tensors``) of the training data partitions."""
    training_run_id: str | None = None
    """MLflow run that trained it, if any."""
    created_at: str = ""
    """UTC creation time, ISO 8601 (filled by ``save_artifact`` when empty)."""
    metrics: dict[str, float] = field(default_factory=dict)
    """Training / validation metrics (e.g. ``val_accel_mse``)."""
    notes: dict[str, str] = field(default_factory=dict)
    """Free-form labels, e.g. ``role`` ("initial" / "reference": a reference model is never deployed), ``weather``."""
    format: str = "safetensors"
    """Serialization of the weights."""
    artifact_format_version: int = ARTIFACT_FORMAT_VERSION
    """Version of this file layout."""

    def to_json(self) -> str:
        """Strict JSON (non-finite metrics become strings so the header stays valid JSON)."""
        d = asdict(self)
        d["training_data_hashes"] = list(self.training_data_hashes)
        d["metrics"] = {k: (v if _finite(v) else str(v)) for k, v in self.metrics.items()}
        return json.dumps(d, sort_keys=True, allow_nan=False)

    @staticmethod
    def from_json(text: str) -> ArtifactMetadata:
        """Parse ``to_json`` output; raises ``CorruptArtifactError`` saying which key is wrong."""
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise CorruptArtifactError(f"artifact metadata is not valid JSON ({e}); re-export the model") from e
        if not isinstance(d, dict):
            raise CorruptArtifactError("artifact metadata must be a JSON object; re-export the model")
        known = set(ArtifactMetadata.__dataclass_fields__)
        missing = sorted({"architecture", "hyperparameters"} - set(d))
        if missing:
            raise CorruptArtifactError(f"artifact metadata lacks {', '.join(missing)}; re-export the model")
        kw = {k: v for k, v in d.items() if k in known}
        kw["training_data_hashes"] = tuple(kw.get("training_data_hashes", ()))
        kw["metrics"] = {k: float(v) for k, v in kw.get("metrics", {}).items()}
        return ArtifactMetadata(**kw)

    def registry_metadata(self) -> dict[str, Any]:
        """The keys the registry knows (``fleetloop.platform.registry.records.KNOWN_METADATA_KEYS``) and a few more."""
        return {
            "format": self.format,
            "input_schema_version": self.input_schema_version,
            "training_data_hashes": list(self.training_data_hashes),
            "parent_version": self.parent_version,
            "training_run_id": self.training_run_id,
            "architecture": self.architecture,
        }


@dataclass(frozen=True)
class LoadedPolicy:
    """A verified policy (eval mode, CPU) and its metadata."""

    model: FusionPolicy
    metadata: ArtifactMetadata
    sha256: str
    """``content_hash`` of the file it came from."""


def _finite(v: float) -> bool:
    return v == v and v not in (float("inf"), float("-inf"))


def hash_tensors(tensors: Mapping[str, torch.Tensor]) -> str:
    """``sha256:<hex>`` of named tensors (names, dtypes, shapes and bytes; order-independent), for data lineage."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return "sha256:" + h.hexdigest()


def content_hash(path: Path | str) -> str:
    """``sha256:<hex>`` of a file's bytes (an artifact's identity for lineage and release signing)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def save_artifact(path: Path | str, model: FusionPolicy, metadata: ArtifactMetadata | None = None) -> Path:
    """Write ``model`` and ``metadata`` to ``path`` atomically; returns the path.

    Refuses (``NonFiniteWeightsError``) to write a model with NaN / Inf weights. Without ``metadata`` the
    architecture and hyperparameters are taken from the model; ``created_at`` is filled when empty.
    """
    bad = nonfinite_parameters(model)
    if bad:
        raise NonFiniteWeightsError(f"refusing to save a model with NaN/Inf in {', '.join(bad)}", bad)
    meta = metadata or ArtifactMetadata(architecture=ARCHITECTURE, hyperparameters=model.config.to_dict())
    if meta.hyperparameters != model.config.to_dict():
        raise ValueError("metadata.hyperparameters differ from the model's config; pass model.config.to_dict()")
    if not meta.created_at:
        meta = replace(meta, created_at=datetime.now(UTC).isoformat(timespec="seconds"))
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()}
    blob = _encode(state, {METADATA_KEY: meta.to_json()})
    dst = Path(path)
    dst.parent.mkdir(parents=True, exist_ok=True)
    return write_bytes_atomic(dst, blob)


def _encode(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> bytes:
    header: dict[str, Any] = {"__metadata__": dict(metadata)}
    offset = 0
    chunks = []
    for name in sorted(tensors):
        t = tensors[name]
        raw = t.view(torch.uint8).numpy().tobytes() if t.numel() else b""
        header[name] = {
            "dtype": _DTYPE_NAMES[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + len(raw)],
        }
        chunks.append(raw)
        offset += len(raw)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the format aligns the data buffer to 8 bytes
    return struct.pack("<Q", len(text)) + text + b"".join(chunks)


def _read_header(f: Any, where: str) -> tuple[dict[str, Any], bytes]:
    """(header, the bytes read: length prefix and header) from an open file positioned at 0."""
    head = f.read(8)
    if len(head) < 8:
        raise CorruptArtifactError(f"{where}: too short to be a safetensors file ({len(head)} bytes)")
    (n,) = struct.unpack("<Q", head)
    if n > MAX_HEADER_BYTES:
        raise CorruptArtifactError(
            f"{where}: header claims {n} bytes (limit {MAX_HEADER_BYTES}); not a policy artifact"
        )
    raw = f.read(n)
    if len(raw) < n:
        raise CorruptArtifactError(f"{where}: truncated header ({len(raw)} of {n} bytes); re-download the artifact")
    try:
        header = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CorruptArtifactError(f"{where}: header is not JSON ({e}); not a safetensors file") from e
    if not isinstance(header, dict):
        raise CorruptArtifactError(f"{where}: header is not a JSON object")
    return header, head + raw


def _metadata_from_header(header: dict[str, Any], where: str) -> ArtifactMetadata:
    meta = header.get("__metadata__") or {}
    if METADATA_KEY not in meta:
        raise CorruptArtifactError(
            f"{where}: no {METADATA_KEY!r} metadata; this is a safetensors file but not a fleetloop policy artifact"
        )
    return ArtifactMetadata.from_json(meta[METADATA_KEY])


def read_metadata(path: Path | str) -> ArtifactMetadata:
    """The artifact's metadata, reading only the header (no weights)."""
    with open(path, "rb") as f:
        header, _ = _read_header(f, str(path))
    return _metadata_from_header(header, str(path))


def _check_compatible(meta: ArtifactMetadata, expected_input_schema: str, where: str) -> None:
    if meta.artifact_format_version != ARTIFACT_FORMAT_VERSION or meta.format != "safetensors":
        raise SchemaMismatchError(
            f"{where}: artifact format {meta.format} v{meta.artifact_format_version}, this vehicle reads "
            f"safetensors v{ARTIFACT_FORMAT_VERSION}; re-export the model with this fleetloop version"
        )
    if meta.input_schema_version != expected_input_schema:
        raise SchemaMismatchError(
            f"{where}: model reads input schema {meta.input_schema_version!r} but this vehicle provides "
            f"{expected_input_schema!r}; retrain or re-export the model for {expected_input_schema!r}"
        )
    if meta.architecture != ARCHITECTURE:
        raise SchemaMismatchError(
            f"{where}: architecture {meta.architecture!r} is unknown to this vehicle (it runs {ARCHITECTURE!r})"
        )


def load_artifact(path: Path | str, expected_input_schema: str = INPUT_SCHEMA_VERSION) -> LoadedPolicy:
    """Verify and load a policy artifact (see the module docstring for the order of checks).

    Raises ``SchemaMismatchError`` / ``CorruptArtifactError`` before any weight is read, and
    ``NonFiniteWeightsError`` before the weights reach a model.
    """
    where = str(path)
    with open(path, "rb") as f:
        header, head = _read_header(f, where)
        meta = _metadata_from_header(header, where)
        _check_compatible(meta, expected_input_schema, where)
        try:
            model = build_policy(meta.architecture, meta.hyperparameters)
        except (TypeError, ValueError) as e:
            raise SchemaMismatchError(f"{where}: hyperparameters do not build a {meta.architecture}: {e}") from e
        expected = dict(model.state_dict())
        specs = _check_tensor_specs(header, expected, where)
        data = f.read()
    total = max((end for _, end in specs.values()), default=0)
    if len(data) < total:
        raise CorruptArtifactError(f"{where}: truncated weights ({len(data)} of {total} bytes); re-download")
    state: dict[str, torch.Tensor] = {}
    for name, (begin, end) in specs.items():
        buf = bytearray(data[begin:end])
        t = torch.frombuffer(buf, dtype=_DTYPES[header[name]["dtype"]]) if buf else torch.empty(0)
        state[name] = t.reshape(expected[name].shape).to(torch.float32)
    bad = [name for name, t in state.items() if not bool(torch.isfinite(t).all())]
    if bad:
        counts = ", ".join(f"{b} ({int((~torch.isfinite(state[b])).sum())} values)" for b in bad)
        raise NonFiniteWeightsError(f"{where}: NaN/Inf weights in {counts}; the model is refused", bad)
    model.load_state_dict(state, strict=True)
    model.eval().requires_grad_(False)
    return LoadedPolicy(model=model, metadata=meta, sha256="sha256:" + hashlib.sha256(head + data).hexdigest())


def _check_tensor_specs(
    header: dict[str, Any], expected: Mapping[str, torch.Tensor], where: str
) -> dict[str, tuple[int, int]]:
    names = {k for k in header if k != "__metadata__"}
    missing, unexpected = sorted(set(expected) - names), sorted(names - set(expected))
    if missing or unexpected:
        raise CorruptArtifactError(
            f"{where}: tensors do not match the architecture (missing: {missing or 'none'}; "
            f"unexpected: {unexpected or 'none'})"
        )
    specs: dict[str, tuple[int, int]] = {}
    for name, want in expected.items():
        info = header[name]
        if not isinstance(info, dict) or info.get("dtype") not in _DTYPES:
            raise CorruptArtifactError(f"{where}: tensor {name!r} has dtype {info!r}; expected one of {list(_DTYPES)}")
        shape = tuple(info.get("shape", ()))
        if shape != tuple(want.shape):
            raise CorruptArtifactError(
                f"{where}: tensor {name!r} has shape {shape}, architecture wants {tuple(want.shape)}"
            )
        begin, end = info.get("data_offsets", (0, -1))
        itemsize = _DTYPES[info["dtype"]].itemsize
        if end - begin != want.numel() * itemsize or begin < 0:
            raise CorruptArtifactError(
                f"{where}: tensor {name!r} has data_offsets {[begin, end]} inconsistent with its shape"
            )
        specs[name] = (begin, end)
    return specs
