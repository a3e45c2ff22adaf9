"""The config-hook module: ``gunicorn -c python:gunicorn_memguard.conf ...``.

Settings come from ``MEMGUARD_*`` environment variables. To keep a config file of your own,
``from gunicorn_memguard.conf import *`` anywhere in it and set ``memguard_*`` variables in it;
hooks you define there, before or after the import, are composed with memguard's (yours first) —
see ``gunicorn_memguard.hooks``.
"""

from __future__ import annotations

import sys
import threading
import types
from typing import Any

from . import hooks
from .hooks import child_exit, on_starting, post_request, post_worker_init, pre_fork, when_ready, worker_exit

__all__ = [
    "child_exit",
    "on_starting",
    "post_request",
    "post_worker_init",
    "pre_fork",
    "when_ready",
    "worker_exit",
]

# The last read of __all__ on this thread: (the reading frame's id, its code, its instruction).
_star = threading.local()


class _Module(types.ModuleType):
    """This module, whose star import keeps the importer's own hooks.

    ``from gunicorn_memguard.conf import *`` below a user's ``def post_worker_init`` would rebind
    the name to memguard's hook and lose theirs. A module cannot see who imports it, except
    through the interpreter's frames: ``import *`` reads ``__all__``, then each name in it, all
    from one instruction of the importing frame (the config file's module code, which gunicorn
    runs again on every HUP while this module stays imported). So a read of a hook name from the
    very frame and instruction that read ``__all__`` is a star import, and that frame's namespace
    is where it binds the names: a hook of the user's found there is composed with ours
    (``hooks.star_imported``). Any other read, ``vars()`` (how gunicorn loads
    ``python:gunicorn_memguard.conf``) and an explicit ``from ... import post_worker_init``
    included, gets memguard's own hook, bound here as usual. (Not a module ``__getattr__``: it is
    only asked for names the module does not bind, and gunicorn reads ``python:`` config modules
    with ``vars()``, which would then find no hooks at all.)
    """

    def __getattribute__(self, name: str) -> Any:
        value = super().__getattribute__(name)
        if name != "__all__" and name not in hooks.HOOKS:
            return value
        caller = sys._getframe(1)
        # the frame's id, not the frame: a frame held here would keep its namespace alive; another
        # frame at the same address, in the same code at the same instruction, is that star import
        # again, which reads __all__ first
        here = (id(caller), caller.f_code, caller.f_lasti)
        if name == "__all__":
            _star.here = here
        elif getattr(_star, "here", None) == here:
            return hooks.star_imported(name, caller.f_locals.get(name))
        return value


sys.modules[__name__].__class__ = _Module
