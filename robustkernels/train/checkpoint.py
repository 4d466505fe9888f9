"""Checkpoints that let ``--resume`` continue exactly: weights, optimiser, schedules, RNG, position.

Safety and durability:

- A checkpoint holds only tensors and plain Python data (numbers, strings, lists, tuples, dicts,
  ``None``), so it is loaded with ``torch.load(weights_only=True)``, which never runs code from
  the file. The RNG states, which Python and NumPy give as tuples holding an ``ndarray``, are
  stored as tensors and ints and rebuilt on restore.
- A file that needs more (a checkpoint of an older version of this script, which pickled NumPy
  objects, or a file crafted to run code when unpickled) is refused with
  :class:`UnsafeCheckpointError`; ``load_checkpoint(path, trusted=True)`` (the command line's
  ``--trust-checkpoint``) loads it with full pickle, for files you wrote yourself.
- Each write goes to a temporary file that is fsynced and then renamed over the checkpoint, and
  the checkpoint it replaces is kept as ``<name>.prev.pt``: a crash at any point of a write
  leaves at least one complete checkpoint, which :func:`find_resume_point` falls back to.
"""

from __future__ import annotations

import os
import pickletools
import random
import re
import warnings
import zipfile
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .errors import CheckpointError, UnsafeCheckpointError

__all__ = [
    "CheckpointError",
    "UnsafeCheckpointError",
    "ResumePoint",
    "capture_rng",
    "restore_rng",
    "previous_path",
    "save_checkpoint",
    "load_checkpoint",
    "find_resume_point",
]

#: What every checkpoint of :func:`robustkernels.train.train` holds.
REQUIRED_KEYS = ("model", "optimizer", "lr_scheduler", "eps_scheduler", "step", "loss_timing", "history", "per_rank")

_TRUST_HINT = (
    "If you wrote this file yourself (for example with an older version of robustkernels, whose "
    "checkpoints pickled NumPy objects), load it with full pickle, which runs any code the file "
    "holds: pass --trust-checkpoint on the command line, or call load_checkpoint(path, trusted=True)."
)


def _python_rng() -> dict[str, Any]:
    version, internal, gauss_next = random.getstate()
    return {"version": version, "state": torch.tensor(internal, dtype=torch.int64), "gauss_next": gauss_next}


def _numpy_rng() -> dict[str, Any]:
    name, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    return {
        "name": str(name),
        "keys": torch.from_numpy(keys.astype(np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached_gaussian": float(cached_gaussian),
    }


def capture_rng() -> dict[str, Any]:
    """States of every RNG a step may use (Python, NumPy, torch CPU, all CUDA devices) as tensors and ints."""
    state = {"python": _python_rng(), "numpy": _numpy_rng(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _restore_python(saved: Any) -> None:
    if isinstance(saved, tuple):  # a trusted checkpoint of an older version: random.getstate() itself
        random.setstate(saved)
        return
    random.setstate((saved["version"], tuple(saved["state"].tolist()), saved["gauss_next"]))


def _restore_numpy(saved: Any) -> None:
    if isinstance(saved, tuple):  # a trusted checkpoint of an older version: np.random.get_state() itself
        np.random.set_state(saved)
        return
    keys = saved["keys"].numpy().astype(np.uint32)
    np.random.set_state((saved["name"], keys, saved["pos"], saved["has_gauss"], saved["cached_gaussian"]))


def restore_rng(state: dict[str, Any]) -> None:
    """Put back the RNG states :func:`capture_rng` returned."""
    _restore_python(state["python"])
    _restore_numpy(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def previous_path(path: str) -> str:
    """Where the checkpoint before ``path`` is kept: ``run/checkpoint.pt`` -> ``run/checkpoint.prev.pt``."""
    stem, ext = os.path.splitext(path)
    return f"{stem}.prev{ext or '.pt'}"


def _fsync_dir(directory: str) -> None:
    # Makes the renames durable; directories cannot be opened for this on every OS.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(path: str, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically, keeping the checkpoint it replaces at :func:`previous_path`.

    The data is fsynced before the renames, so a crash leaves either the old pair of files or
    the new one; a crash between the two renames leaves only the previous checkpoint, which
    ``--resume auto`` then uses.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    if os.path.exists(path):
        os.replace(path, previous_path(path))
    os.replace(tmp, path)
    _fsync_dir(directory)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    # torch prefixes weights-only failures with advice about its defaults; the cause follows.
    _, sep, cause = text.partition("WeightsUnpickler error:")
    return (cause.strip() if sep else text).splitlines()[0]


def _refused_global(exc: BaseException) -> str | None:
    """The global a weights-only load refused (``posix.system``), if that is why it failed."""
    match = re.search(r"GLOBAL ([\w.]+)", str(exc))
    return match.group(1) if match else None


def _plain_pickle_globals(path: str) -> list[str]:
    """Globals a plain pickle file (not torch's zip format) names, found without unpickling it.

    torch's weights-only reader rejects such a file at its first opcode, before seeing what it
    would import; :mod:`pickletools` only parses the opcodes and never executes them.
    """
    if zipfile.is_zipfile(path):
        return []
    names, strings = [], []
    try:
        with open(path, "rb") as f:
            for op, arg, _ in pickletools.genops(f):
                if op.name == "GLOBAL":
                    names.append(str(arg).replace(" ", "."))
                elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                    names.append(".".join(strings[-2:]))
                elif isinstance(arg, str):
                    strings.append(arg)
    except Exception:  # not a pickle stream at all: garbage or damage, not an attack
        return []
    return names


def _check_file(path: str) -> None:
    if not os.path.exists(path):
        raise CheckpointError(path, "no such file")
    if not os.path.isfile(path):
        raise CheckpointError(path, "not a regular file")
    if os.path.getsize(path) == 0:
        raise CheckpointError(path, "the file is empty (0 bytes): its write never finished")


def _unsafe(path: str, refused: str) -> UnsafeCheckpointError:
    return UnsafeCheckpointError(
        path,
        f"refused to load: it holds the Python object {refused}, and unpickling it could run code from "
        f"the file (checkpoints of this version hold only tensors and plain data). {_TRUST_HINT}",
    )


def _unpickle(path: str, trusted: bool) -> object:
    try:
        with warnings.catch_warnings():
            # Printed for damaged files too; the error below says what is wrong.
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=not trusted)
    except Exception as exc:  # what torch and pickle raise on damaged files varies: zip, EOF, int() errors
        refused = None if trusted else _refused_global(exc) or next(iter(_plain_pickle_globals(path)), None)
        if refused is not None:
            raise _unsafe(path, refused) from None
        raise CheckpointError(
            path, f"unreadable: truncated, corrupt or not a PyTorch file ({type(exc).__name__}: {_first_line(exc)})"
        ) from None


def _check_layout(path: str, state: object) -> dict[str, Any]:
    if not isinstance(state, dict):
        raise CheckpointError(path, f"not a training checkpoint of robustkernels (it holds a {type(state).__name__})")
    missing = [key for key in REQUIRED_KEYS if key not in state]
    if missing:
        tensors = sum(isinstance(v, torch.Tensor) for v in state.values())
        looks = f"; it looks like a bare state_dict of {tensors} tensors" if tensors == len(state) and tensors else ""
        raise CheckpointError(path, f"not a training checkpoint of robustkernels (missing {', '.join(missing)}){looks}")
    return state


def load_checkpoint(path: str, trusted: bool = False) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`, without running code from it.

    Args:
        path: the file.
        trusted: load with full pickle (``weights_only=False``), for checkpoints you wrote with
            an older version of this script. Never for files from elsewhere: unpickling can
            run arbitrary code.

    Raises:
        UnsafeCheckpointError: the file holds Python objects beyond tensors and plain data.
        CheckpointError: the file is missing, empty, truncated, corrupt, or not a training
            checkpoint (another program's file, a bare ``state_dict``); the message names it.
    """
    _check_file(path)
    return _check_layout(path, _unpickle(path, trusted))


@dataclass
class ResumePoint:
    """The checkpoint a resume continues from, and warnings about newer ones that were skipped."""

    path: str
    state: dict[str, Any]
    skipped: list[str] = field(default_factory=list)


def find_resume_point(path: str, trusted: bool = False) -> ResumePoint | None:
    """The newest readable of ``path`` and :func:`previous_path` (``--resume auto``), or ``None`` if neither exists.

    A newest checkpoint that is missing or damaged (a crash during its write, a full disk) is
    skipped for the previous one, with a warning in :attr:`ResumePoint.skipped` naming both
    files. A file refused as unsafe is never skipped: that raises, as it may not be an accident.

    Raises:
        UnsafeCheckpointError: as :func:`load_checkpoint`.
        CheckpointError: both files exist and neither is readable.
    """
    candidates = [p for p in (path, previous_path(path)) if os.path.exists(p)]
    if not candidates:
        return None
    problems: list[CheckpointError] = []
    for candidate in candidates:
        try:
            state = load_checkpoint(candidate, trusted)
        except UnsafeCheckpointError:
            raise
        except CheckpointError as exc:
            problems.append(exc)
            continue
        skipped = [f"{exc}; resuming from the previous checkpoint {candidate} instead" for exc in problems]
        if candidate != path and not problems:
            skipped.append(f"checkpoint {path} is missing; resuming from the previous checkpoint {candidate} instead")
        return ResumePoint(candidate, state, skipped)
    raise CheckpointError(path, "no readable checkpoint to resume from: " + "; ".join(str(e) for e in problems))
