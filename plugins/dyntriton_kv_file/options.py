"""The file store's settings (cheap to import: the CLI builds its options from them)."""

from __future__ import annotations

from dataclasses import dataclass

import click

from dynamo_triton.settings import setting

__all__ = ["FileSettings"]


@dataclass(frozen=True)
class FileSettings:
    """What the file store's factory receives.

    :param root: the shared folder (None: ``$XDG_RUNTIME_DIR/dyntriton-kv-UID``).
    :param watch: ``auto`` (inotify where it works, polling where not) or ``poll``.
    """

    __panel__ = "file store"

    root: str | None = setting(
        None,
        "--file-kv-root",
        envvar="DYN_FILE_KV",
        type=click.Path(file_okay=False),
        help="Folder of the file store (--store-kv file), shared by every process on the host. "
        "Default: $XDG_RUNTIME_DIR/dyntriton-kv-UID.",
    )
    watch: str = setting(
        "auto",
        "--file-kv-watch",
        envvar="DYN_FILE_KV_WATCH",
        type=click.Choice(["auto", "poll"]),
        help="How the file store follows changes: auto (inotify where the folder supports it) or poll.",
    )
