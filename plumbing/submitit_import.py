"""``import submitit`` without closing the process's log files (the job runner's one way to import it)."""
from __future__ import annotations

import sys
from typing import Any

__all__ = ["import_submitit"]


def import_submitit() -> Any:
    """``import submitit`` without closing the process's log files. submitit configures logging when first
    imported (``logging.config.dictConfig``), and that closes every handler the process already has: a Runner's
    log file of an mmengine task run earlier in the same process (a notebook, the tests), which mmengine then
    writes to (``AttributeError`` on its ``None`` stream). The handlers are hidden from that one call (logging's
    own registries, ``_handlers`` and ``_handlerList``, which the clearing reads) and given back after it."""
    if "submitit" in sys.modules:
        return sys.modules["submitit"]
    import logging

    named, listed = dict(logging._handlers), list(logging._handlerList)
    logging._handlers.clear()
    del logging._handlerList[:]
    try:
        import submitit
    finally:
        logging._handlers.update({k: v for k, v in named.items() if k not in logging._handlers})
        logging._handlerList[:0] = listed
    return submitit
