"""One registry for every field transform.

A transform is a class with a ``name`` class attribute (``"mask.email"``,
``"fpe.ff1"``), a ``validate`` step that runs when the policy is checked and an
``apply`` step that runs per record. Users add one by decorating a class or a
plain function with :func:`transform` and naming it in a policy::

    @transform("mask.initials")
    def initials(value: str) -> str:
        return ".".join(part[0] for part in value.split()) + "."

In a policy a transform is written either as a bare name (``keep``) or as a
mapping whose first key is the family and whose value is the variant, with the
remaining keys as parameters (``{mask: keep_last, n: 4}``).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from udfs.errors import MISSING, ParamError, TransformError  # re-exported: plugins import them from here

__all__ = [
    "MISSING",
    "ParamError",
    "Transform",
    "TransformError",
    "get",
    "names",
    "transform",
]


class Transform:
    """Base class of all field transforms.

    Subclasses set ``name`` and override :meth:`apply`; those that need a key set
    ``key_purpose`` and read ``self.key`` in :meth:`open`. Everything set in
    ``__init__`` must be picklable, because the compiled policy is shipped to the
    Flink workers; ciphers are made in :meth:`open`.
    """

    name: ClassVar[str] = ""
    #: keyring purpose of the key this transform needs, or None
    key_purpose: ClassVar[str | None] = None
    #: parameter names this transform accepts besides the common ones
    params: ClassVar[tuple[str, ...]] = ()
    #: False for transforms that add randomness (Flink must not fold them)
    deterministic: ClassVar[bool] = True
    #: True when :meth:`invert` gives the original back to whoever holds the key
    reversible: ClassVar[bool] = False
    #: True for deterministic transforms whose per-value work is worth an LRU (keyed hashes,
    #: masks); the engine then serves repeated values from :meth:`cached_apply`
    memoize_results: ClassVar[bool] = False
    #: LRU entries per task when ``memoize_results`` is set
    CACHE_SIZE: ClassVar[int] = 65_536
    #: True when the transform reads other fields of the record (a context tweak, say);
    #: the engine then calls :meth:`apply_in_record` instead of :meth:`apply`
    needs_record: ClassVar[bool] = False

    #: parameters every transform accepts
    COMMON_PARAMS: ClassVar[tuple[str, ...]] = ("domain", "key_id")

    def __init__(self, params: Mapping[str, Any] | None = None, *, domain: str = "default") -> None:
        self.options = dict(params or {})
        self.domain = str(self.options.pop("domain", domain))
        self.key_id: str | None = self.options.pop("key_id", None)
        unknown = sorted(set(self.options) - set(self.params))
        if unknown:
            raise ParamError(
                unknown[0],
                f"unknown parameter for {self.name}",
                ", ".join(self.params + self.COMMON_PARAMS) or "none",
            )
        self.key: bytes | None = None
        self.validate()

    # -- policy-check time ---------------------------------------------------
    def validate(self) -> None:
        """Check ``self.options``; raise :class:`ParamError` when one is wrong."""

    # -- worker time ---------------------------------------------------------
    def open(self, keyring: Any | None) -> None:
        """Resolve the key and build ciphers. Runs once per task, never per record."""
        if self.key_purpose is None:
            return
        if keyring is None:
            raise ParamError("key_id", f"{self.name} needs a '{self.key_purpose}' key and no keyring was given")
        entry = keyring.resolve(self.key_purpose, self.key_id)
        self.key_id = entry.id
        self.key = entry.material

    def apply(self, value: Any) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def apply_in_record(self, value: Any, record: Mapping[str, Any]) -> Any:
        return self.apply(value)

    def cached_apply(self) -> Callable[[Any], Any]:
        """``apply``, behind a bounded LRU when the transform allows it (call after :meth:`open`)."""
        if self.memoize_results and self.deterministic and not self.needs_record:
            return memoize(self.apply, self.CACHE_SIZE)
        return self.apply

    def invert(self, value: Any) -> Any:
        raise TransformError(f"{self.name} is not reversible")

    def invert_in_record(self, value: Any, record: Mapping[str, Any]) -> Any:
        return self.invert(value)

    # -- helpers -------------------------------------------------------------
    def option(self, key: str, default: Any = None) -> Any:
        return self.options.get(key, default)

    def int_option(self, key: str, default: int, *, minimum: int = 0) -> int:
        raw = self.options.get(key, default)
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise ParamError(key, f"must be an integer, got {type(raw).__name__}", f"an integer >= {minimum}")
        if raw < minimum:
            raise ParamError(key, f"must be at least {minimum}, got {raw}", f"an integer >= {minimum}")
        return raw

    def choice_option(self, key: str, default: str, allowed: tuple[str, ...]) -> str:
        raw = self.options.get(key, default)
        if raw not in allowed:
            raise ParamError(key, f"unknown value {raw!r}", ", ".join(allowed))
        return raw

    def __repr__(self) -> str:  # never shows key material
        return f"<{type(self).__name__} {self.name} domain={self.domain} key_id={self.key_id}>"


def memoize(apply: Callable[[Any], Any], size: int) -> Callable[[Any], Any]:
    """A bounded LRU in front of a deterministic ``apply``: customers repeat, keyed hashes need not.

    Unhashable values (lists, objects) bypass the cache; errors are never cached.
    """
    if size <= 0:
        return apply
    cached = functools.lru_cache(maxsize=size)(apply)

    def lookup(value: Any) -> Any:
        try:
            return cached(value)
        except TypeError:
            if isinstance(value, (str, int, float)):
                raise
            return apply(value)

    return lookup


_REGISTRY: dict[str, type[Transform]] = {}


def _register(cls: type[Transform]) -> type[Transform]:
    if not cls.name:
        raise TypeError(f"{cls.__qualname__} has no name")
    previous = _REGISTRY.get(cls.name)
    if previous is not None and previous.__qualname__ != cls.__qualname__:
        raise ValueError(f"transform {cls.name!r} is already registered by {previous.__qualname__}")
    _REGISTRY[cls.name] = cls
    return cls


def transform(name: str, *, deterministic: bool = True) -> Callable[[Any], Any]:
    """Register a :class:`Transform` subclass, or wrap a plain ``value -> value`` function.

    A wrapped function takes the value and, optionally, keyword parameters that the
    policy supplies; a ``ValueError`` it raises becomes a dead-letter reason.
    """

    def decorate(obj: Any) -> Any:
        if inspect.isclass(obj) and issubclass(obj, Transform):
            obj.name = name
            return _register(obj)
        if not callable(obj):
            raise TypeError("@transform decorates a Transform subclass or a function")
        signature = inspect.signature(obj)
        accepted = tuple(p for p in list(signature.parameters)[1:])

        class FunctionTransform(Transform):
            params = accepted

            def apply(self, value: Any) -> Any:
                if value is None or value is MISSING:
                    return value
                try:
                    return obj(value, **self.options)
                except TransformError:
                    raise
                except (ValueError, TypeError, AttributeError) as exc:
                    # the function's own message may quote the value: keep only its type
                    raise TransformError(f"{name} refused the value ({type(exc).__name__})") from None

        FunctionTransform.__name__ = FunctionTransform.__qualname__ = f"{obj.__name__}_transform"
        FunctionTransform.__module__ = obj.__module__
        FunctionTransform.name = name
        FunctionTransform.deterministic = deterministic
        FunctionTransform.__doc__ = obj.__doc__
        _register(FunctionTransform)
        return obj

    return decorate


def get(name: str) -> type[Transform]:
    _load_builtins()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(name) from None


def names() -> list[str]:
    _load_builtins()
    return sorted(_REGISTRY)


def families() -> set[str]:
    return {n.split(".", 1)[0] for n in names()}


#: what a field spec may look like, for error messages
SPEC_FORMS = "keep, drop, null, {mask: email}, ..."


def split_spec(spec: Any) -> tuple[str, dict[str, Any]]:
    """A policy field spec as (transform name, params): ``{mask: keep_last, n: 4}`` -> ``("mask.keep_last", {"n": 4})``.

    A string is a name alone. In a mapping the family is the first key whose value names a
    registered variant (``{n: 4, mask: keep_last}`` works too), else the first key. The
    name is not looked up: :func:`get` says whether it exists. The one reading of a spec,
    for the policy loader and the SQL functions alike.

    Raises
    ------
    ParamError
        With an empty ``param``: the spec is neither a name nor a mapping, or its family's
        value is not a variant name.
    """
    if isinstance(spec, str):
        return spec, {}
    if not isinstance(spec, Mapping) or not spec:
        raise ParamError("", "a transform is a name or a mapping", SPEC_FORMS)
    known = set(names())
    family = next((k for k, v in spec.items() if isinstance(v, str) and f"{k}.{v}" in known), next(iter(spec)))
    variant = spec[family]
    if not isinstance(variant, str):
        variants = ", ".join(n for n in names() if n.startswith(f"{family}."))
        raise ParamError("", f"'{family}' needs a variant name, got {type(variant).__name__}",
                         variants or "a registered transform")
    return f"{family}.{variant}", {k: v for k, v in spec.items() if k != family}


_BUILTIN_MODULES = (
    "udfs.masking",
    "udfs.substitute",
    "udfs.pseudonym",
    "udfs.encryption",
    "udfs.generalize",
    "udfs.fpe",
    "udfs.tokenization",
    "udfs.redact_pii",
    "udfs.geo",
)
_loaded = False


def _load_builtins() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    import importlib

    for module in _BUILTIN_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
