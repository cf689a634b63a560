"""Run a long antspyx call in a forked child process, so that Ctrl-C stops it at once.

antspyx holds the Python GIL for a whole registration, so a KeyboardInterrupt reaches Python
only when ANTs returns (about a minute for a 2 mm pair). In a child, the parent stays free to
take the interrupt and terminates the child. Where ``fork`` is unavailable (Windows) the call
runs in-process, and an interrupt waits for ANTs as before.
"""

from __future__ import annotations

import multiprocessing
import signal
import sys
from typing import Any, Callable

from atlasreg.errors import AtlasregError


def run_in_child(function: Callable[..., Any], *args: Any) -> Any:
    """``function(*args)`` in a forked child; its result (picklable) or its error, raised here.

    An AtlasregError in the child is raised as one here; any other error as a RuntimeError
    carrying its type and message.
    """
    if "fork" not in multiprocessing.get_all_start_methods():
        return function(*args)
    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)
    sys.stdout.flush()
    sys.stderr.flush()  # the child must not write the parent's buffered output a second time
    child = context.Process(target=_child, args=(send, function, args), daemon=True)
    # a Ctrl-C between the fork and the ``try`` below would leave the child running, unknown to
    # anyone: hold SIGINT until the ``finally`` that stops the child is in place (the child keeps
    # it held: the parent stops it)
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        child.start()
    except BaseException:  # no child (e.g. fork failed): nothing to stop
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        raise
    try:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # a Ctrl-C that came meanwhile is raised here
        send.close()
        try:
            failed, value = receive.recv()
        except EOFError:
            child.join()
            raise RuntimeError(f"the ANTs process died (exit code {child.exitcode})") from None
    finally:
        if child.is_alive():  # interrupted (or failed) while ANTs still runs: stop it now
            child.terminate()
        child.join()
        receive.close()
    if failed == "atlasreg":
        raise AtlasregError(value)
    if failed:
        raise RuntimeError(value)
    return value


def _child(send, function: Callable[..., Any], args: tuple) -> None:
    try:
        send.send(("", function(*args)))
    except AtlasregError as exc:
        send.send(("atlasreg", str(exc)))
    except BaseException as exc:  # reported to the parent, never a traceback from the child
        send.send(("other", f"{type(exc).__name__}: {exc}"))
    finally:
        send.close()
