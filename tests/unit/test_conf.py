"""``from gunicorn_memguard.conf import *`` in a user's config file, anywhere in it: the config is
loaded by gunicorn's own loader, and the user's hooks are composed with memguard's whether they
come before or after the import (``conf.py``, ``hooks.star_imported``, ``hooks.compose_into``)."""

from __future__ import annotations

import importlib
import sys
import textwrap
import types
from pathlib import Path
from typing import Any

import pytest
from gunicorn.app.base import Application
from gunicorn.config import Config

from gunicorn_memguard import conf, hooks

CALLS: list[Any] = []


def recorded(worker: Any) -> None:
    """A user's hook named as a string in a config file (gunicorn resolves those)."""
    CALLS.append(("by name", worker))


USER_HOOKS = f"""
from {__name__} import CALLS as calls

def post_worker_init(worker):
    calls.append(("user post_worker_init", worker))

def child_exit(server, worker):
    calls.append(("user child_exit", worker))
"""
IMPORT = "from gunicorn_memguard.conf import *\n"


@pytest.fixture
def load(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """Load a config file's text as gunicorn does; return its Config and the calls its hooks made."""
    monkeypatch.delitem(sys.modules, "__config__", raising=False)
    CALLS.clear()

    def loading(text: str, location: str | None = None) -> tuple[Config, list[Any]]:
        app = Application.__new__(Application)  # only its config loading, not its command line
        app.cfg = Config()
        if location is None:
            path = tmp_path / "gunicorn.conf.py"
            path.write_text(textwrap.dedent(text))
            location = str(path)
        app.load_config_from_module_name_or_filename(location)
        return app.cfg, CALLS

    return loading


def hook(cfg: Config, name: str) -> Any:
    return cfg.settings[name].get()


@pytest.mark.parametrize("where", ["above", "below"])
def test_user_hooks_are_composed_whichever_side_of_the_import_they_are(load, where):
    text = USER_HOOKS + IMPORT if where == "above" else IMPORT + USER_HOOKS
    cfg, calls = load(text)
    composed = hook(cfg, "post_worker_init")
    if where == "above":  # composed by the import itself
        assert isinstance(composed, hooks.Composed) and composed.ours is hooks.post_worker_init
    assert hooks.compose_into(cfg) == ["post_worker_init", "child_exit"]  # each one logged once
    assert hooks.compose_into(cfg) == []
    hook(cfg, "post_worker_init")("w")
    hook(cfg, "child_exit")("s", "w")
    assert calls == [("user post_worker_init", "w"), ("user child_exit", "w")]
    for name, ours in hooks.HOOKS.items():  # memguard's own in every one, after the user's
        current = hook(cfg, name)
        assert current is ours or (isinstance(current, hooks.Composed) and current.ours is ours), name
    assert not any(isinstance(held, types.FrameType) for held in conf._star.here)  # nor its namespace


def test_a_reload_composes_the_reloaded_hooks(load):
    """gunicorn runs the config file again on HUP; memguard's module stays imported."""
    cfg, calls = load(USER_HOOKS + IMPORT)
    cfg_again, _ = load(USER_HOOKS.replace("user post_worker_init", "reloaded post_worker_init") + IMPORT)
    assert hook(cfg_again, "post_worker_init") is not hook(cfg, "post_worker_init")
    assert hooks.compose_into(cfg_again) == ["post_worker_init", "child_exit"]
    hook(cfg_again, "post_worker_init")("w")
    assert calls == [("reloaded post_worker_init", "w")]


def test_the_hook_module_itself_gives_memguard_hooks(load):
    cfg, _ = load("", "python:gunicorn_memguard.conf")
    assert all(hook(cfg, name) is ours for name, ours in hooks.HOOKS.items())
    assert hooks.compose_into(cfg) == []
    module = importlib.import_module("gunicorn_memguard.conf")
    assert all(getattr(module, name) is ours and vars(module)[name] is ours for name, ours in hooks.HOOKS.items())


def test_reads_other_than_the_star_import_get_memguard_hooks():
    namespace: dict[str, Any] = {}
    exec(  # noqa: S102  a module namespace with a hook of its own that reads memguard's in other ways
        textwrap.dedent("""
        import gunicorn_memguard.conf as memguard
        from gunicorn_memguard import conf

        def post_worker_init(worker):
            seen.append(worker)
            memguard.post_worker_init(worker)  # chaining by hand: no recursion

        names = memguard.__all__
        attribute = memguard.post_worker_init
        same_line = conf.__all__ and conf.post_worker_init
        by_getattr = getattr(conf, "post_worker_init")
        from gunicorn_memguard.conf import post_request as explicit
        """),
        namespace,
    )
    for name in ("attribute", "same_line", "by_getattr"):
        assert namespace[name] is hooks.post_worker_init, name
    assert namespace["explicit"] is hooks.post_request
    namespace["seen"] = []
    namespace["post_worker_init"]("w")
    assert namespace["seen"] == ["w"]


def test_what_is_composed_already_is_kept(load):
    cfg, calls = load(
        IMPORT
        + f"""
from {__name__} import CALLS as calls
from gunicorn_memguard.hooks import chain

@chain
def post_worker_init(worker):
    calls.append(("chained", worker))

from gunicorn_memguard.conf import *
"""
    )
    chained = hook(cfg, "post_worker_init")
    assert isinstance(chained, hooks.Composed) and not isinstance(chained.theirs, hooks.Composed)
    chained("w")
    assert calls == [("chained", "w")]
    assert hook(cfg, "pre_fork") is hooks.pre_fork  # imported twice: memguard's, not composed with itself
    assert hooks.compose_into(cfg) == []


def test_a_hook_named_by_a_string_is_resolved_and_composed(load):
    cfg, _ = load(f'post_worker_init = "{__name__}.recorded"\n' + IMPORT)
    hook(cfg, "post_worker_init")("w")
    assert CALLS == [("by name", "w")]
    assert hooks.compose_into(cfg) == ["post_worker_init"]


@pytest.mark.parametrize("user_hook", [False, True], ids=["memguard-alone", "composed-with-the-users"])
def test_a_workers_post_request_becomes_its_guards_own_check(load, user_hook):
    """Once the guard runs, gunicorn calls the guard's gated check directly as post_request (no
    lookup through memguard's hook per request); a user's post_request still runs first."""
    user = "def post_request(worker, req, environ, resp):\n    calls.append(('user post_request', worker))\n"
    text = f"from {__name__} import CALLS as calls\n" + (user if user_hook else "")
    cfg, calls = load(text + IMPORT)
    hooks.compose_into(cfg)
    checked: list[Any] = []
    hooks._bind_post_request(cfg, lambda *args: checked.append(args[0]))
    cfg.post_request("worker", None, None, None)
    assert checked == ["worker"]
    assert calls == ([("user post_request", "worker")] if user_hook else [])
    if not user_hook:
        assert hook(cfg, "post_request") is not hooks.post_request


@pytest.mark.parametrize("user_hook", [False, True], ids=["memguard-alone", "composed-with-the-users"])
def test_a_workers_request_clock_switches_post_request_to_gunicorns_no_op_and_back(load, user_hook):
    """While the limits are far a gevent worker's requests end with gunicorn's own no-op hook
    (the hub clock checks); near them, through the guard's gated check again. A user's
    post_request runs either way."""
    user = "def post_request(worker, req, environ, resp):\n    calls.append(('user post_request', worker))\n"
    text = f"from {__name__} import CALLS as calls\n" + (user if user_hook else "")
    cfg, calls = load(text + IMPORT)
    hooks.compose_into(cfg)
    checked: list[Any] = []

    def after_request(*args: Any) -> None:
        checked.append(args[0])

    hooks._bind_post_request(cfg, after_request)
    switch = hooks.request_switch(cfg, after_request)
    assert switch is not None
    switch(False)
    cfg.post_request("far", None, None, None)
    if not user_hook:
        assert hook(cfg, "post_request") is cfg.settings["post_request"].default
    switch(True)
    cfg.post_request("near", None, None, None)
    assert checked == ["near"]
    assert calls == ([("user post_request", "far"), ("user post_request", "near")] if user_hook else [])
    assert hooks.request_switch(cfg, lambda *args: None) is None  # not this guard's hook: left alone
