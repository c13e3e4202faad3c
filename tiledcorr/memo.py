"""``cached``: a property computed once per instance, for the frozen dataclasses that key the plan caches.

:class:`~tiledcorr.geometry.Geometry` and :class:`~tiledcorr.execution.tiles.Tile`
are looked up in dictionaries on every call and asked for their derived sizes
dozens of times per call; recomputing those was a tenth of a small call.
``functools.cached_property`` would do, but on Python 3.11 it takes a lock,
which ``torch.compile`` cannot trace.
"""

from __future__ import annotations

from typing import Any, Callable, Generic, TypeVar, overload

import torch

T = TypeVar("T")


class cached(Generic[T]):  # noqa: N801 (used as a decorator, like property)
    """Like ``functools.cached_property``, without a lock (each thread computes the same value).

    The value is stored in the instance's ``__dict__``, which a frozen
    dataclass leaves writable, and then shadows this (non-data) descriptor.
    Under ``torch.compile`` (symbolic sizes) it is computed and not stored.
    """

    def __init__(self, fn: Callable[[Any], T]) -> None:
        self.fn, self.name = fn, fn.__name__
        self.__doc__ = fn.__doc__

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, instance: None, owner: type | None = None) -> "cached[T]": ...
    @overload
    def __get__(self, instance: object, owner: type | None = None) -> T: ...

    def __get__(self, instance: object | None, owner: type | None = None) -> "T | cached[T]":
        if instance is None:
            return self
        value = self.fn(instance)
        if not torch.compiler.is_compiling():
            instance.__dict__[self.name] = value
        return value


def cached_hash(instance: Any, key: Callable[[Any], tuple]) -> int:
    """``hash(key(instance))``, computed once per instance (outside ``torch.compile``) and kept in its ``__dict__``.

    ``key`` is a plain function, so a call that finds the hash allocates nothing.
    """
    value = instance.__dict__.get("_hash")
    if value is None:
        value = hash(key(instance))
        if not torch.compiler.is_compiling():
            instance.__dict__["_hash"] = value
    return value
