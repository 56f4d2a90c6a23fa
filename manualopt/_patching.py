"""Setting an attribute on one object for a while, and putting back exactly what was there."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["Undo", "patch_attribute"]

#: Removes one patch; calling it twice does nothing more.
Undo = Callable[[], None]

_MISSING = object()
_KEY = "__manualopt_key__"


def patch_attribute(owner: object, name: str, value: Any, key: object) -> Undo:
    """Set ``owner.name = value`` on this instance only; return the function that puts back what was there.

    ``key`` identifies who patches (a fit's session): patching twice with one key keeps the first patch. The undo
    restores the instance attribute that was there before (someone else's patch included) or removes ours, unless
    someone else replaced ours meanwhile, in which case theirs stays.
    """
    current = vars(owner).get(name, _MISSING)
    if current is not _MISSING and getattr(current, _KEY, None) is key:
        return lambda: None
    setattr(value, _KEY, key)
    setattr(owner, name, value)

    def undo() -> None:
        if vars(owner).get(name, _MISSING) is not value:
            return  # already undone, or someone else's patch replaced ours: theirs stays
        if current is _MISSING:
            delattr(owner, name)
        else:
            setattr(owner, name, current)

    return undo
