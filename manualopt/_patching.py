"""Setting an attribute on one object for a while, and putting back exactly what was there."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["Undo", "patch_attribute", "undo_all"]

#: Removes one patch; calling it twice does nothing more.
Undo = Callable[[], None]

_MISSING = object()
_KEY = "__manualopt_key__"
_SAVED = "__manualopt_saved__"  # what a patch replaced
_UNDONE = "__manualopt_undone__"  # set on a patch once its undo ran


def patch_attribute(owner: object, name: str, value: Any, key: object) -> Undo:
    """Set ``owner.name = value`` on this instance only; return the function that puts back what was there.

    ``key`` identifies who patches (a fit's session): patching twice with one key keeps the first patch. Patches stack:
    the undo of the top one restores what was there before it, skipping the patches below it that were undone
    meanwhile; the undo of one below the top (two fits that overlap on one shared object and end in another order
    than they started) marks it undone, so that the top one's undo skips it. Whatever the order of the undos, the
    attribute ends as it was before the first patch; a patch by someone else on top stays.
    """
    current = vars(owner).get(name, _MISSING)
    if current is not _MISSING and getattr(current, _KEY, None) is key:
        return lambda: None
    setattr(value, _KEY, key)
    setattr(value, _SAVED, current)
    setattr(owner, name, value)

    def undo() -> None:
        if getattr(value, _UNDONE, False):
            return  # already undone
        setattr(value, _UNDONE, True)
        if vars(owner).get(name, _MISSING) is not value:
            return  # below the top: the patch above it skips it when it is undone
        restored = current
        while restored is not _MISSING and getattr(restored, _UNDONE, False):
            restored = getattr(restored, _SAVED, _MISSING)  # a patch below that was undone while this one was on top
        if restored is _MISSING:
            delattr(owner, name)
        else:
            setattr(owner, name, restored)

    return undo


def undo_all(undos: list[Undo]) -> Undo:
    """One undo for several: runs them in reverse order (the last patch is undone first)."""

    def undo() -> None:
        for function in reversed(undos):
            function()

    return undo
