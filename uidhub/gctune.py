"""Garbage collection of a serving process: the start-up objects frozen, the young generation collected less often.

A request allocates tens of thousands of short-lived objects (parsed rows, result
dicts, resolver frames), so with CPython's default first-generation threshold (700)
a collection runs every few hundred allocations, and each older-generation
collection walks every object built at start-up (the schema, the mappers, the
modules: several hundred thousand) although none of them ever becomes garbage.
`gc.freeze()` after start-up moves those to a permanent generation no collection
scans, and a higher first threshold lets a request's objects die by reference
count before a collection looks at them. Cycles are still collected, just in
larger batches.
"""

from __future__ import annotations

import gc
import logging

log = logging.getLogger(__name__)


def freeze_after_startup(gen0_threshold: int) -> None:
    """Collect what start-up left behind, freeze the survivors, raise the first generation's threshold."""
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(gen0_threshold, gen1, gen2)
    log.debug("gc: %d objects frozen, thresholds %s", gc.get_freeze_count(), gc.get_threshold())
