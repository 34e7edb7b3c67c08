"""`NamedTuple` for gaffer's modules without importing `typing` at run time.

`typing` imports `re` (and with it `enum`), `contextlib` and `warnings`: ~8 ms of CPU before anything else, on the
path of every program that must start fast (`gobuildcache`, which `go` starts for every command and waits for).
The type checker reads typing's own NamedTuple; at run time a class written the same way, with `NamedTuple` as its
one base, becomes the `collections.namedtuple` that typing would make: the annotated names are the fields (in
order, a value in the body their default), the rest of the body (methods, docstring) goes on the class.
tests/test_tuples.py compares the two.
"""

from __future__ import annotations

__all__ = ["TYPE_CHECKING", "NamedTuple"]

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing; type checkers take this name as true
if TYPE_CHECKING:
    from typing import NamedTuple
else:
    from collections import namedtuple

    # what typing.NamedTuple refuses in the class body, and what it leaves off the class
    _PROHIBITED = frozenset({"__new__", "__init__", "__slots__", "__getnewargs__", "_fields", "_field_defaults",
                             "_make", "_replace", "_asdict", "_source"})
    _SPECIAL = frozenset({"__module__", "__name__", "__annotations__"})

    class _NamedTupleMeta(type):
        def __new__(mcs, name, bases, namespace):
            if namespace.get("_root", False):
                return super().__new__(mcs, name, bases, namespace)
            if bases != (NamedTuple,):
                raise TypeError("a gaffer NamedTuple has NamedTuple as its only base")
            fields = list(namespace.get("__annotations__", {}))
            defaults = [namespace[f] for f in fields if f in namespace]
            if any(f not in namespace for f in fields[len(fields) - len(defaults):]):
                raise TypeError(f"{name}: a field without a default follows one with a default")
            cls = namedtuple(name, fields, defaults=defaults, module=namespace["__module__"])
            cls.__annotations__ = dict(namespace.get("__annotations__", {}))
            for key, value in namespace.items():
                if key in _PROHIBITED:
                    raise AttributeError(f"{name}: cannot overwrite NamedTuple attribute {key}")
                if key not in _SPECIAL and key not in fields:
                    setattr(cls, key, value)
            return cls

    class NamedTuple(metaclass=_NamedTupleMeta):
        _root = True
