"""On ipykernel 6 (no subshells: Colab, many JupyterHubs, older VS Code kernels) let the dashboard's Stop click in
while ``trainer.train()`` blocks the cell.

There the click's ``comm_msg`` waits in the kernel's shell socket behind the running ``execute_request``, so it
would arrive after training. jupyter-ui-poll's answer is to run the kernel's message loop for one message from
inside the cell, stashing any ``execute_request`` it meets and replaying it later. Ours is narrower: at a step
boundary, from the main thread, we move what waits in the shell socket into ipykernel 6's own FIFO
(``shell_stream.flush()`` → ``schedule_dispatch`` → ``msg_queue``), then take back out only the ``comm_msg``
messages addressed to *this widget's* comm and hand them to the kernel's comm handler; everything else (execute
requests, other widgets' messages, kernel-info requests) goes back into the queue untouched and in its original
order, to be dispatched by the kernel after the cell as usual. Only a message's header and content are decoded
to decide; a handled message is fully deserialized (signature checked) by the kernel's own ``Session``.

ipykernel 7 dispatches the shell channel differently (a shell-channel thread and per-subshell sockets, no
``msg_queue``): there ``_stop_routing`` handles the click on a subshell thread instead, and this poller reports
itself unavailable. Measured cost when nothing waits (ipykernel 6.17, this machine): ~23 µs; it runs at most every
``min_interval`` seconds.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

log = logging.getLogger("ptt_nb")

DELIM = b"<IDS|MSG>"


def _kernel() -> Any:
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    shell = get_ipython()
    return getattr(shell, "kernel", None) if shell is not None else None


def supported(kernel: Any) -> bool:
    """ipykernel 6's single-threaded shell dispatch: a ``shell_stream`` feeding a FIFO ``msg_queue``."""
    if kernel is None:
        return False
    try:
        import ipykernel

        major = int(str(getattr(ipykernel, "__version__", "0")).split(".")[0])
    except (ImportError, ValueError):
        return False
    queue = getattr(kernel, "msg_queue", None)
    return (major == 6 and getattr(kernel, "shell_stream", None) is not None and queue is not None
            and callable(getattr(queue, "get_nowait", None)) and callable(getattr(queue, "put_nowait", None))
            and callable(getattr(kernel, "dispatch_shell", None))
            and "comm_msg" in getattr(kernel, "shell_handlers", {}))


def _frame_bytes(frame: Any) -> bytes:
    return frame.bytes if hasattr(frame, "bytes") else bytes(frame)


def _comm_id_of(raw: list[Any]) -> str | None:
    """The comm id of a raw ``comm_msg`` (identities, DELIM, hmac, header, parent, metadata, content, ...)."""
    try:
        idx = next(i for i, f in enumerate(raw) if _frame_bytes(f) == DELIM)
        header = json.loads(_frame_bytes(raw[idx + 2]))
        if header.get("msg_type") != "comm_msg":
            return None
        return json.loads(_frame_bytes(raw[idx + 5])).get("comm_id")
    except (StopIteration, ValueError, IndexError, TypeError, AttributeError):
        return None


class CommPoller:
    """Handles this comm's queued messages at a step boundary (ipykernel 6, main thread only)."""

    def __init__(self, comm_id: str | None, kernel: Any = None, min_interval: float = 0.05) -> None:
        self.kernel = kernel if kernel is not None else _kernel()
        self.comm_id = comm_id
        self.available = bool(comm_id) and supported(self.kernel)
        self.min_interval = min_interval
        self.handled = 0  # messages of our comm handled from inside a cell
        self._last = 0.0

    def poll(self) -> int:
        """Handle our comm's waiting messages now; returns how many. Cheap no-op where unavailable."""
        if not self.available or threading.current_thread() is not threading.main_thread():
            return 0
        now = time.monotonic()
        if now - self._last < self.min_interval:
            return 0
        self._last = now
        try:
            return self._poll()
        except Exception as exc:  # noqa: BLE001 - never break training over a UI nicety; stop polling instead
            self.available = False
            log.warning("ptt_nb: Stop-click polling disabled (%s); use the kernel's Interrupt to stop", exc)
            return 0

    def _poll(self) -> int:
        kernel = self.kernel
        kernel.shell_stream.flush()  # socket → schedule_dispatch → msg_queue (in arrival order)
        queue = kernel.msg_queue
        items = []
        while True:
            try:
                items.append(queue.get_nowait())
            except Exception:  # noqa: BLE001 - tornado/asyncio QueueEmpty
                break
        ours, keep = [], []
        for item in items:
            _idx, dispatch, args = item
            if (getattr(dispatch, "__func__", None) is getattr(kernel.dispatch_shell, "__func__", object())
                    and args and _comm_id_of(list(args[0])) == self.comm_id):
                ours.append(args[0])
            else:
                keep.append(item)
        for item in keep:  # back in the same order; nothing else can enqueue meanwhile (we hold the main thread)
            queue.put_nowait(item)
        handler = kernel.shell_handlers["comm_msg"]
        for raw in ours:
            idents, msg_list = kernel.session.feed_identities(raw, copy=False)
            msg = kernel.session.deserialize(msg_list, content=True, copy=False)
            handler(kernel.shell_stream, idents, msg)
        self.handled += len(ours)
        return len(ours)
