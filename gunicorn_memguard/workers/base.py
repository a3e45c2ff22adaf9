"""What every memguard worker class adds to its stock gunicorn parent: memguard installs itself
from the master, with no config file, and re-installs on every spawn (a HUP reload builds a new
gunicorn config without memguard's hooks)."""

from __future__ import annotations

from typing import Any

from ..hooks import install


class MemguardWorker:
    cfg: Any  # set by gunicorn's Worker, the other base of every memguard worker class
    log: Any

    @classmethod
    def check_config(cls, cfg: Any, log: Any) -> None:
        """Runs in the master before the first fork: bad settings stop gunicorn here."""
        parent = getattr(super(), "check_config", None)
        if parent is not None:
            parent(cfg, log)
        install(cfg, log)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # gunicorn builds the worker object in the master
        install(self.cfg, self.log)
