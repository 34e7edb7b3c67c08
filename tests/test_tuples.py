"""gaffer.tuples.NamedTuple (no `typing` at run time) makes the class typing.NamedTuple makes from the same body."""

from __future__ import annotations

import pickle
import typing

import pytest

from gaffer import tuples
from gaffer.digest import Digest


def _example(base: type) -> type:
    """One class body, made with either NamedTuple."""

    class Example(base):  # type: ignore[valid-type, misc]
        """A docstring."""

        name: str
        size: int
        tags: tuple[str, ...] = ()
        flag: bool = False

        def label(self) -> str:
            return f"{self.name}/{self.size}"

        @property
        def big(self) -> bool:
            return self.size > 10

    return Example


Ours, Theirs = _example(tuples.NamedTuple), _example(typing.NamedTuple)  # type: ignore[arg-type]


def test_the_same_class_as_typings() -> None:
    ours, theirs = Ours("a", 20, flag=True), Theirs("a", 20, flag=True)
    assert ours == theirs == ("a", 20, (), True) and hash(ours) == hash(theirs)
    assert Ours._fields == Theirs._fields and Ours._field_defaults == Theirs._field_defaults
    assert list(Ours.__annotations__) == list(Theirs.__annotations__)  # typing makes ForwardRefs of the strings
    assert Ours.__doc__ == Theirs.__doc__ == "A docstring."
    assert repr(ours) == repr(theirs) == "Example(name='a', size=20, tags=(), flag=True)"
    assert ours.label() == theirs.label() == "a/20" and ours.big and theirs.big
    assert ours._replace(size=1) == theirs._replace(size=1) and not ours._replace(size=1).big
    assert ours._asdict() == theirs._asdict()
    assert Ours._make(["b", 1, ("x",), False]) == Theirs._make(["b", 1, ("x",), False])
    assert Ours.__module__ == Theirs.__module__ == __name__ and Ours.__mro__[1:] == Theirs.__mro__[1:] == (tuple, object)
    digest = Digest("0" * 64, 1)  # a module-level one: pickled by name
    assert pickle.loads(pickle.dumps(digest)) == digest and type(pickle.loads(pickle.dumps(digest))) is Digest
    with pytest.raises(AttributeError):
        ours.size = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        Ours("only the name")  # type: ignore[call-arg]


def test_what_typing_refuses_is_refused() -> None:
    with pytest.raises(TypeError, match="without a default follows"):
        class _Order(tuples.NamedTuple):
            a: int = 0
            b: int  # type: ignore[misc]
    with pytest.raises(AttributeError, match="_replace"):
        class _Overwrite(tuples.NamedTuple):
            a: int

            def _replace(self, **changes: int) -> _Overwrite:  # type: ignore[misc, override]
                return self


def test_gaffers_tuples_are_ours_at_run_time() -> None:
    """The modules on gobuildcache's path use it (if they used typing's, `typing` would be imported)."""
    assert Digest("0" * 64, 1) == ("0" * 64, 1) and str(Digest("0" * 64, 1)) == "0" * 64 + "/1"
    assert Digest._fields == ("hash", "size_bytes") and not hasattr(Digest, "__orig_bases__")
    assert hasattr(Theirs, "__orig_bases__")  # what tells the two apart
