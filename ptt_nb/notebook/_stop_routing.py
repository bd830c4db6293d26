"""Make the dashboard's Stop click reach Python while ``trainer.train()`` blocks the cell.

JupyterLab/Notebook 7 send widget messages on a kernel subshell, but ipykernel 7.4 routes an incoming comm
message to the shell that last *published* on that comm (``Comm._reply_subshell_for``), i.e. the busy main
shell, so the click would wait for the cell to end. On this one widget's comm we route every incoming message
to the subshell the front-end sent it on instead; its handler then runs on that subshell's thread at once
(measured ~40 ms). Where the hook does not exist (older ipykernel, other front-ends) nothing is changed and
messages arrive when the cell ends, as before. The handler is therefore minimal and thread-safe: a stop only
calls ``monitor.request_stop`` (a plain attribute set under a lock; ``monitor.stop_requested`` becomes true
and the callback stops at the next step boundary); everything else is queued for the dashboard's flush thread.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger("ptt_nb")

MIN_IPYKERNEL = (7, 0)  # subshells (JEP 91) appeared in ipykernel 7; the hook was verified on 7.4.0


def _version_tuple(text: str) -> tuple[int, ...]:
    out = []
    for part in text.split(".")[:3]:
        digits = "".join(ch for ch in part if ch.isdigit())
        if not digits:
            break
        out.append(int(digits))
    return tuple(out)


def _default_route(data: Any, default: Any) -> Any:
    """Route an incoming message to the subshell it was sent on (``default`` = the header's subshell id)."""
    return default


def route_to_sender_subshell(comm: Any) -> bool:
    """Override ``comm._reply_subshell_for`` on this comm only; True when the override is in place."""
    if comm is None:
        return False
    hook = getattr(comm, "_reply_subshell_for", None)
    if hook is None or not callable(hook):
        return False
    try:
        import ipykernel

        if _version_tuple(getattr(ipykernel, "__version__", "0")) < MIN_IPYKERNEL:
            return False
        params = list(inspect.signature(hook).parameters)
    except (ImportError, TypeError, ValueError):
        return False
    if len(params) != 2:  # not the (data, default) hook we know: leave the kernel's routing alone
        log.debug("ptt_nb: unknown _reply_subshell_for signature %s; stop clicks wait for the cell", params)
        return False
    try:
        comm._reply_subshell_for = _default_route
    except Exception:  # noqa: BLE001 - a frozen/slotted comm class: keep the default routing
        return False
    return True


def make_handler(monitor: Any, forward: Callable[[dict[str, Any]], None]) -> Callable[..., None]:
    """The widget's ``on_msg`` callback: stop → ``monitor.request_stop``; anything else → ``forward``."""

    def on_msg(_widget: Any, content: Any, _buffers: Any = None) -> None:
        if isinstance(content, dict) and content.get("type") == "stop":
            monitor.request_stop(by="user", reason="user_stop")
        else:
            forward(content)

    return on_msg


STOP_HINTS = {
    # the override is in place; the click also needs a front end that sends on subshells (JupyterLab 4, Notebook 7)
    "subshell": "Stop: the button (JupyterLab/Notebook 7) or the kernel's Interrupt (graceful, any front end)",
    "poll": "Stop: the button (taken at step boundaries) or the kernel's Interrupt (graceful)",
    "interrupt": "Stop: use the kernel's Interrupt (graceful at the next step); the button waits for the cell",
}


def stop_mode(subshell_routing: bool, polling: bool) -> tuple[str, str]:
    """Which stop reaches a busy ``train()`` cell here: ``(mode, hint)`` for the dashboard header.

    ``subshell``: ipykernel 7 routes the click to a subshell thread; ``poll``: ipykernel 6, the callback handles the
    click at step boundaries (``_comm_poll``); ``interrupt``: neither, only the kernel's Interrupt (a graceful stop,
    ``sources._graceful_interrupt``) gets through while the cell runs."""
    mode = "subshell" if subshell_routing else "poll" if polling else "interrupt"
    return mode, STOP_HINTS[mode]
