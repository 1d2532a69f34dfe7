"""Output files of the commands: checked before the work starts, written whole or not at all.

A command that writes files (traces, Chrome traces, reports, latents, profiles, validation
results) first checks every output path (``check_writable``, ``check_folder``): a mistyped or
unwritable path is then refused in one line before minutes of work, not after. It writes its
files at the end with ``write_outputs``: each to a temporary file beside its target, then, once
all are complete, each renamed over its target. A full disk, a permission error or a crash
mid-write thus never leaves a truncated file under the output's name, and a run that fails
after writing some of its outputs removes the ones it wrote: its outputs appear all together or
not at all. Errors are ``UserError`` naming the flag and the path (one line, exit 2).

Paths that are not regular files (``/dev/null``, ``/dev/stdout``, a FIFO) are written directly:
they cannot be renamed over, and they hold nothing that a partial write could corrupt.

Stdlib only, so that ``sim.cost`` (profile files) can use ``atomic_write`` below ``sim.cli``.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

from sim.errors import UserError
from sim.progress import announce_written

# A writer: fills the file at the path it is given (a temporary one, later renamed).
Writer = Callable[[Path], object]


def _is_special(path: Path) -> bool:
    """True when ``path`` exists and is not a regular file (after symlinks): a device, FIFO or
    socket, which is written in place (renaming over ``/dev/null`` would replace it)."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return False
    return not stat.S_ISREG(mode) and not stat.S_ISDIR(mode)


def _real(path: str | Path) -> Path:
    """``path`` with symlinks resolved, so that a rename replaces the file a link points to,
    not the link."""
    p = Path(path)
    return Path(os.path.realpath(p)) if p.is_symlink() else p


def _reason(e: OSError) -> str:
    """The OS's words for ``e`` ("No space left on device", "Permission denied")."""
    return e.strerror or str(e) or type(e).__name__


def _probe(folder: Path, flag: str, path: str | Path) -> None:
    """Create and remove a file in ``folder``: proves it accepts new files (permissions, a
    read-only mount, exhausted inodes) for this process, whoever it runs as."""
    import tempfile  # here: with shutil and random, 6 ms of every sim import

    try:
        fd, name = tempfile.mkstemp(dir=folder, prefix=".ditsim-probe-")
        os.close(fd)
        os.unlink(name)
    except OSError as e:
        raise UserError(f"{flag} {path}: cannot create files in {folder} ({_reason(e)})") \
            from None


def _nearest_existing(folder: Path) -> Path:
    """``folder`` or its closest ancestor that exists (as anything: the caller checks it is a
    folder)."""
    while not folder.exists() and not folder.is_symlink() and folder != folder.parent:
        folder = folder.parent
    return folder


def check_writable(path: str | Path, flag: str, make_folders: bool = False) -> None:
    """Raise a ``UserError`` naming ``flag`` and ``path`` unless a file can be written at
    ``path``: it is not a folder, its folder exists and is a folder (or, with ``make_folders``,
    can be created: its nearest existing ancestor is a folder), and a probe file can be created
    and removed there. Call it before the work starts."""
    if str(path) == "":
        raise UserError(f"{flag}: empty path; give a file name")
    target = _real(path)
    if target.is_dir():
        raise UserError(f"{flag} {path} is a folder; give a file name")
    if _is_special(target):
        if not os.access(target, os.W_OK):
            raise UserError(f"{flag} {path}: not writable")
        return
    folder = target.parent
    if not folder.exists():
        if not make_folders:
            raise UserError(f"{flag} {path}: folder {folder} does not exist")
        folder = _nearest_existing(folder)
    if not folder.is_dir():
        raise UserError(f"{flag} {path}: {folder} is a file, not a folder")
    _probe(folder, flag, path)


def check_folder(path: str | Path, flag: str) -> None:
    """Raise a ``UserError`` naming ``flag`` unless ``path`` is a folder that accepts new files,
    or can be created as one (its nearest existing ancestor is a folder that does)."""
    if str(path) == "":
        raise UserError(f"{flag}: empty path; give a folder")
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{flag} {path} exists and is not a folder")
    existing = _nearest_existing(folder)
    if not existing.is_dir():
        raise UserError(f"{flag} {path}: {existing} is a file, not a folder")
    _probe(existing, flag, path)


def check_outputs(outputs: list[tuple[str, str | Path | None]]) -> None:
    """``check_writable`` for each ``(flag, path)`` whose path is given, and refuse one path
    named by two flags (the second file would silently replace the first)."""
    seen: dict[str, str] = {}
    for flag, path in outputs:
        if path is None:
            continue
        check_writable(path, flag)
        key = os.path.realpath(path)
        if key in seen and not _is_special(Path(key)):
            raise UserError(f"{flag} {path}: the same file as {seen[key]}; give each output "
                            f"its own file")
        seen[key] = flag


def _temp_name(target: Path) -> Path:
    """A temporary name beside ``target`` (same folder, so the rename stays on one file system
    and is atomic), hidden and unique to this process."""
    return target.with_name(f".{target.name}.{os.getpid()}.tmp")


def atomic_write(path: str | Path, write: Writer) -> Path:
    """Call ``write`` on a temporary file beside ``path``, then rename it to ``path``; on any
    error the temporary file is removed and the error raised (``OSError`` as the OS gave it),
    so ``path`` holds either its old content or the complete new one. Returns ``path``."""
    target = _real(path)
    if _is_special(target):
        write(target)
        return Path(path)
    tmp = _temp_name(target)
    try:
        write(tmp)
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)
    return Path(path)


@contextlib.contextmanager
def output_errors(flag: str, path: str | Path) -> Iterator[None]:
    """Turn an ``OSError`` raised inside into a ``UserError`` naming ``flag`` and ``path``."""
    try:
        yield
    except OSError as e:
        raise UserError(f"{flag} {path}: cannot write ({_reason(e)})") from None


def write_outputs(outputs: list[tuple[str, str | Path | None, Writer]],
                  announce: bool = True) -> None:
    """Write each ``(flag, path, writer)`` whose path is given, all or none: every file goes to
    a temporary name first, and only when all are complete are they renamed into place. If a
    write fails, the temporary files are removed and the targets keep what they held; if a
    rename fails (the target changed since the check), the files this call already put in
    place are removed too. Errors become a ``UserError`` naming the flag and path. With
    ``announce``, each file written is then named on stderr (``wrote PATH (FLAG)``; not
    ``/dev/null`` and other special files)."""
    staged: list[tuple[str, str | Path, Path, Path]] = []  # flag, path, temp, target
    placed: list[Path] = []
    try:
        for flag, path, write in outputs:
            if path is None:
                continue
            target = _real(path)
            with output_errors(flag, path):
                if _is_special(target):
                    write(target)  # nothing to rename: written in place
                    continue
                tmp = _temp_name(target)
                staged.append((flag, path, tmp, target))
                write(tmp)
        for flag, path, tmp, target in staged:
            with output_errors(flag, path):
                tmp.replace(target)
            placed.append(target)
    except BaseException:
        for target in placed:
            target.unlink(missing_ok=True)
        raise
    finally:
        for _, _, tmp, _ in staged:
            tmp.unlink(missing_ok=True)
    if announce:
        announce_written([(flag, str(path)) for flag, path, _, _ in staged])


def write_output(path: str | Path, write: Writer, flag: str = "output",
                 announce: bool = True) -> None:
    """Write one file atomically (``write_outputs`` with one entry)."""
    write_outputs([(flag, path, write)], announce)
