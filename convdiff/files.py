"""Files from users are untrusted, and folder writes either complete or leave nothing behind.

Reading: `load_weights_only` is `torch.load(weights_only=True)` (tensors and plain containers, plus an explicit
allow-list), with errors that name the file: a damaged file, or one whose unpickling would need other Python
objects (and could run code from the file), is refused.

Writing: a folder (a checkpoint, a pipeline, a converted model) is written into a hidden `.<name>.partial` sibling,
every file in it is fsynced, and only then is it renamed into place; the folder it replaces is removed last.
A write that fails (disk full, no permission) removes its partial folder and raises one `OSError` that
names the target and the cause, so the previous folder stays exactly as it was. A single file (a latent shard,
an index, a sample `.npz`, a video) is written the same way through a hidden `.<name>.partial` file
(`replace_file`).
"""

import errno
import os
import pickle
import shutil
from pathlib import Path

# What a full disk looks like when torch's zip writer, rather than the OS, reports it.
_WRITER_FAILURES = ("unexpected pos", "PytorchStreamWriter failed", "inline_container")


class UnsafePickleError(ValueError):
    """A file whose unpickling needs Python objects outside the weights-only allow-list (it could run code)."""


def first_line(error: BaseException) -> str:
    """`Type: first line of the message`, for one-line error reports."""
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__


def unsafe_reason(error: BaseException):
    """The line of a weights-only refusal that names the Python object, or None for other unpickling errors."""
    return next((line.strip() for line in str(error).splitlines() if "global" in line.lower()), None)


def load_weights_only(path, map_location="cpu", safe_globals=(), mmap: bool = False):
    """`torch.load(path, weights_only=True)` allowing only `safe_globals` besides tensors and plain containers.

    Raises ValueError naming the file when it is damaged, or when it holds other Python objects (whose
    unpickling could run code from the file).
    """
    import torch

    try:
        with torch.serialization.safe_globals(list(safe_globals)):
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as error:
        reason = unsafe_reason(error)
        if reason is None:
            detail = next((line.strip() for line in str(error).splitlines() if line.startswith("Unsupported")),
                          first_line(error))
            raise ValueError(f"{path} is not a readable torch checkpoint (damaged, truncated or not written by "
                             f"torch.save; {detail}).") from error
        raise UnsafePickleError(f"{path} holds Python objects that torch.load(weights_only=True) refuses to unpickle, "
                         f"since unpickling them could run code from the file ({reason}).") from error
    except (RuntimeError, EOFError, OSError) as error:
        if isinstance(error, FileNotFoundError):
            raise
        raise ValueError(f"{path} is not a readable torch checkpoint (damaged, truncated or not written by "
                         f"torch.save; {first_line(error)}).") from error


def read_json(path, expected: str = "a JSON object", kind=dict):
    """The JSON value in `path`; a ValueError naming the file when it is not valid JSON or not of `kind`."""
    import json

    try:
        value = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON ({first_line(error)}): it is damaged, or was not written by "
                         f"convdiff or diffusers; expected {expected}.") from error
    if not isinstance(value, kind):
        raise ValueError(f"{path} holds {type(value).__name__} {str(value)[:60]!r}, expected {expected}.")
    return value


def fsync_tree(folder) -> None:
    """Flush every file under `folder`, then the folders themselves, to disk."""
    folder = Path(folder)
    for root, _, files in os.walk(folder, topdown=False):
        for name in files:
            with open(os.path.join(root, name), "rb") as handle:
                os.fsync(handle.fileno())
        fsync_dir(root)


def fsync_dir(folder) -> None:
    """Make a rename inside `folder` durable (no-op where folders cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def is_write_failure(error: BaseException) -> bool:
    """An OS error, or torch's zip writer giving up (which is how a full disk shows under torch.save)."""
    return isinstance(error, OSError) or (isinstance(error, RuntimeError)
                                          and any(s in str(error) for s in _WRITER_FAILURES))


def write_failure(target, error: BaseException, kept: str = "") -> OSError:
    """One clear OSError for a failed write of `target`, naming the cause (and the free space when unknown)."""
    code = getattr(error, "errno", None)
    if code:
        cause = os.strerror(code)
    else:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        cause = f"{first}; {_free_space(Path(target).parent)}"
    note = f" {kept}" if kept else ""
    return OSError(code or errno.EIO, f"Could not write {target}: {cause}. The partial copy was removed.{note}")


def _free_space(folder: Path) -> str:
    try:
        return f"{shutil.disk_usage(folder).free / 2**20:.0f} MiB free on that disk"
    except OSError:
        return "free space unknown"


def partial_path(target, keep_suffix: bool = False) -> Path:
    """`.<name>.partial`, or `.<stem>.partial<suffix>` with `keep_suffix`."""
    target = Path(target)
    if keep_suffix:
        return target.with_name(f".{target.stem}.partial{target.suffix}")
    return target.with_name(f".{target.name}.partial")


def replace_folder(target, write, check=None) -> Path:
    """Run `write(partial_folder)`, fsync it, then swap it in for `target` atomically.

    `check()` runs again just before the swap (a target that appeared meanwhile). On any failure the
    partial folder is removed and `target` is left as it was; a failed write raises `write_failure`.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = partial_path(target)
    if partial.exists():  # left by a run that was killed while writing
        shutil.rmtree(partial)
    try:
        partial.mkdir()
        write(partial)
        fsync_tree(partial)
        if check is not None:
            check()
    except BaseException as error:
        shutil.rmtree(partial, ignore_errors=True)
        if is_write_failure(error) and not isinstance(error, (FileExistsError, FileNotFoundError)):
            raise write_failure(target, error, f"{target} is unchanged.") from error
        raise
    swap_into_place(partial, target)
    return target


def replace_file(target, write, keep_suffix: bool = False) -> Path:
    """Run `write(partial_file)`, fsync it, then rename it over `target`: a killed write leaves only the partial.

    A failed write removes the partial file and raises `write_failure`; `target` is left as it was.
    `keep_suffix` ends the partial's name in the target's suffix, for writers that choose the format by the
    name (ffmpeg, OpenCV) or append one otherwise (`np.savez` adds `.npz`).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = partial_path(target, keep_suffix)
    try:
        write(partial)
        with open(partial, "rb") as handle:
            os.fsync(handle.fileno())
    except BaseException as error:
        partial.unlink(missing_ok=True)
        if is_write_failure(error) and not isinstance(error, (FileExistsError, FileNotFoundError)):
            raise write_failure(target, error, f"{target} is unchanged.") from error
        raise
    os.replace(partial, target)
    fsync_dir(target.parent)
    return target


def swap_into_place(partial: Path, target: Path) -> None:
    """Rename the complete `partial` folder to `target`, replacing an existing one; drop the old copy last."""
    stale = target.with_name(f".{target.name}.old")
    if stale.exists():
        shutil.rmtree(stale)
    if target.exists():
        target.rename(stale)
    try:
        partial.rename(target)
    except BaseException:
        if stale.exists() and not target.exists():
            stale.rename(target)
        raise
    fsync_dir(target.parent)
    if stale.exists():
        shutil.rmtree(stale)
