"""Which file of an artifact is the model: a registered version or a training run's artifact may be one file or a
folder that holds it.

Pure path logic, shared by the registry's download and everything that takes a model from a local path.
"""

from __future__ import annotations

from pathlib import Path

from fleetloop.platform.errors import DataError, NotFoundError

__all__ = ["MODEL_SUFFIX", "find_model_file"]

MODEL_SUFFIX = ".safetensors"


def find_model_file(path: Path | str, *, what: str | None = None) -> Path:
    """The model file at ``path``: ``path`` itself when it is a file, else the one ``*.safetensors`` file under the
    folder (at any depth). ``what`` names the artifact in errors (default: the path).

    NotFoundError when ``path`` does not exist; DataError when the folder holds no model file, or several (which
    one would run is then a guess).
    """
    p = Path(path)
    where = what or str(p)
    if p.is_file():
        return p
    if not p.is_dir():
        raise NotFoundError(f"model artifact {p} does not exist; give a model file or a folder that holds one")
    files = sorted(p.rglob(f"*{MODEL_SUFFIX}"))
    if not files:
        raise DataError(f"{where} holds no {MODEL_SUFFIX} model file; register or train the model again")
    if len(files) > 1:
        names = ", ".join(str(f.relative_to(p)) for f in files)
        raise DataError(f"{where} holds {len(files)} model files ({names}); an artifact carries exactly one model")
    return files[0]
