"""Write a file so that readers see the old version or the new one, never half of one.

One helper for every layer (bundles, checkpoints' ``latest``, registries,
token stores, metrics, demo state): write a temporary file next to the target
(a rename is atomic only within one filesystem), then ``os.replace`` it into
place. A kill mid-write leaves at worst a hidden ``.NAME.tmp-PID-THREAD`` file,
never a torn target. It lives at the bottom of the package (imports nothing of
genba) so that every layer may use it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

Content = str | bytes | Callable[[Path], object]


def write_atomic(path: str | os.PathLike, content: Content, *, fsync: bool = False,
                 mode: int | None = None, encoding: str = "utf-8") -> Path:
    """Replace ``path`` with ``content`` in one step; returns ``path``.

    ``content`` is text, bytes, or a callable that writes the file it is given
    (e.g. ``lambda p: save_file(tensors, str(p))``). ``fsync`` flushes the data
    to disk before the rename (a crash of the machine, not just of the
    process, then keeps it too). ``mode`` (e.g. ``0o600`` for secrets) is set
    on the file before it becomes visible, so it is never readable by others.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    try:
        if callable(content):
            content(tmp)
        else:
            _write(tmp, content, mode, encoding)
        if mode is not None:
            os.chmod(tmp, mode)
        if fsync:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _write(tmp: Path, content: str | bytes, mode: int | None, encoding: str) -> None:
    data = content.encode(encoding) if isinstance(content, str) else content
    # created with ``mode`` already (not chmod-ed later): a secret is never briefly world-readable
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666 if mode is None else mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
