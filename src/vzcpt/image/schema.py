"""Image records: dataclasses declared once, encoded as compact JSON.

A record is a dataclass registered under a short tag with `@record("tag")`.
Its type hints are the schema: the same declaration drives `encode`,
`decode` and `vzcpt show`, so there is no second description to drift.

JSON keeps the dump readable (`vzcpt show`) and Python's json handles
integers of any size, so u64 values (addresses, inode numbers) round-trip.
The few things JSON lacks are spelled out:

- bytes -> {"$b": "<base64>"};
- tuples, sets and frozensets -> lists (frozensets sorted, so dumps are stable);
- enums -> their value;
- dict keys -> strings; decoding converts them back with the declared key
  type (`dict[int, X]` gets its int keys back).

Decoding is driven by the declared types, compiled once per type into a
closure, and rejects anything that does not fit (wrong type, unknown key,
missing field) with `CorruptDump`: a dump file is untrusted input.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import enum
import json
import operator
import threading
import types
import typing
from collections.abc import Callable
from typing import Any, TypeVar

from vzcpt.errors import CorruptDump

T = TypeVar("T")

_Decoder = Callable[[Any], Any]

_REGISTRY: dict[str, type] = {}
_DECODERS: dict[Any, _Decoder] = {}
_INIT_FIELDS: dict[type, tuple[str, ...]] = {}
_BUILDING: dict[Any, _Decoder] = {}  # decoders of the compile in progress
_COMPILE_LOCK = threading.RLock()


def record(tag: str) -> Callable[[type[T]], type[T]]:
    """Register a dataclass as an image record under `tag`.

    Use it above `@dataclass`; the tag is what the dump file stores, so it
    must never change once dumps exist.
    """

    def register(cls: type[T]) -> type[T]:
        if not dataclasses.is_dataclass(cls):
            raise TypeError(f"@record({tag!r}) needs a dataclass, got {cls.__qualname__}")
        old = _REGISTRY.get(tag)
        # A re-imported module registers the same class again: that is fine;
        # two different classes under one tag would make dumps ambiguous.
        if old is not None and (old.__module__, old.__qualname__) != (
            cls.__module__,
            cls.__qualname__,
        ):
            raise ValueError(
                f"record tag {tag!r} is used by both {old.__qualname__} and {cls.__qualname__}"
            )
        _REGISTRY[tag] = cls
        _DECODERS.pop(old, None)
        _INIT_FIELDS.pop(cls, None)
        _ENCODERS.pop(cls, None)
        _FIELDS.pop(cls, None)
        setattr(cls, "__record_tag__", tag)  # noqa: B010 - mypy rejects new attrs on type
        return cls

    return register


def registered() -> dict[str, type]:
    """All record classes by tag (a copy), e.g. for `vzcpt show`."""
    return dict(_REGISTRY)


# ---------------------------------------------------------------- encoding


def _init_fields(cls: type) -> tuple[str, ...]:
    names = _INIT_FIELDS.get(cls)
    if names is None:
        # Only init fields: the others are derived in __post_init__ and could
        # not be passed back to the constructor.
        names = tuple(f.name for f in dataclasses.fields(cls) if f.init)
        _INIT_FIELDS[cls] = names
    return names


# Values JSON takes as they are. Exact types: a bool or an enum is a
# subclass of int or str, and an enum is stored as its value.
_SCALARS = frozenset({int, str, float, bool, type(None)})
_ENCODERS: dict[type, Callable[[Any], dict[str, Any]]] = {}


def _dataclass_encoder(cls: type) -> Callable[[Any], dict[str, Any]]:
    """An encoder for instances of `cls`, made once per class.

    A dump holds records by the thousand (one per mapping of a process):
    the field values are fetched by one attrgetter and only those that are
    not plain scalars go through to_jsonable.
    """
    known = _ENCODERS.get(cls)
    if known is not None:
        return known
    names = _init_fields(cls)
    fetch = _getter(names)

    def enc(obj: Any) -> dict[str, Any]:
        return {
            name: value if type(value) in _SCALARS else to_jsonable(value)
            for name, value in zip(names, fetch(obj), strict=True)
        }

    _ENCODERS[cls] = enc
    return enc


def _getter(names: tuple[str, ...]) -> Callable[[Any], tuple[Any, ...]]:
    """Fetches the named attributes of an object as a tuple (in C when there are several)."""
    if len(names) > 1:
        return operator.attrgetter(*names)
    return lambda obj: tuple(getattr(obj, name) for name in names)


def _key(k: object) -> str:
    if isinstance(k, enum.Enum):
        k = k.value
    if isinstance(k, bool) or not isinstance(k, int | str):
        raise TypeError(f"dict key {k!r}: only int, str and enum keys can be stored")
    return str(k)


def to_jsonable(obj: object) -> Any:
    """Turn a record (or any supported value) into plain JSON data."""
    cls = type(obj)
    if cls in _SCALARS:
        return obj
    enc = _ENCODERS.get(cls)
    if enc is not None:
        return enc(obj)
    if obj is None or isinstance(obj, bool | int | float | str):
        if isinstance(obj, enum.Enum):  # IntEnum / StrEnum are ints / strs too
            return to_jsonable(obj.value)
        return obj
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _dataclass_encoder(cls)(obj)
    if isinstance(obj, list | tuple):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, dict):
        out = {_key(k): to_jsonable(v) for k, v in obj.items()}
        if len(out) != len(obj):
            raise TypeError(f"dict keys collide once written as strings: {list(obj)!r}")
        return out
    if isinstance(obj, enum.Enum):
        return to_jsonable(obj.value)
    if isinstance(obj, bytes | bytearray | memoryview):
        return {"$b": base64.b64encode(obj).decode("ascii")}
    if isinstance(obj, frozenset | set):
        return sorted((to_jsonable(v) for v in obj), key=lambda v: (type(v).__name__, v))
    raise TypeError(f"cannot store a {type(obj).__qualname__} in a dump record")


def encode(obj: object) -> bytes:
    """One record as bytes: its tag and its fields, compact JSON."""
    cls = type(obj)
    tag = getattr(cls, "__record_tag__", None)
    if tag is None or _REGISTRY.get(tag) is not cls:
        raise TypeError(f"{cls.__qualname__} is not a registered record (use @record)")
    # ensure_ascii: names from /proc may hold undecodable bytes kept as lone
    # surrogates (os.fsdecode); escaped, they survive the trip, raw UTF-8 cannot.
    return json.dumps({"t": tag, "v": obj}, separators=(",", ":"), default=_json_default).encode(
        "ascii"
    )


def _json_default(obj: object) -> Any:
    """What json's encoder cannot write itself: records, bytes, sets, enums.

    It writes scalars, lists, tuples and dicts in C, exactly as to_jsonable
    has them, and calls this for the rest. A record whose fields hold a dict
    goes through to_jsonable, which checks the keys; any other becomes a
    dict of its fields as they are, for json to walk on.
    """
    fields = _FIELDS.get(type(obj))
    if fields is None:
        if not dataclasses.is_dataclass(obj) or isinstance(obj, type):
            return to_jsonable(obj)
        names = _init_fields(type(obj))
        fields = _FIELDS[type(obj)] = (names, _getter(names))
    names, fetch = fields
    values = fetch(obj)
    if dict in set(map(type, values)):
        return to_jsonable(obj)
    return dict(zip(names, values, strict=True))


# Per record class: its init fields, and what fetches them all at once.
_FIELDS: dict[type, tuple[tuple[str, ...], Callable[[Any], tuple[Any, ...]]]] = {}


# ---------------------------------------------------------------- decoding


class _Mismatch(Exception):
    """A value that does not fit its type, deep inside a record.

    Its place ("vmas[3].start") is assembled only when it happens, on the
    way out: the containers it passes add their part. Decoding a dump of
    thousands of records must not spend its time formatting places.
    """

    def __init__(self, problem: str, subject: str = "value") -> None:
        super().__init__(problem)
        self.problem = problem
        self.subject = subject  # named when the place is empty
        self.place: list[str] = []  # innermost first

    def at(self, part: str) -> _Mismatch:
        self.place.append(part)
        return self

    def corrupt(self) -> CorruptDump:
        where = "".join(reversed(self.place)).lstrip(".")
        return CorruptDump(f"{where or self.subject}: {self.problem}")


def _fail(want: str, value: Any) -> _Mismatch:
    shown = repr(value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return _Mismatch(f"expected {want}, found {shown}")


def _decoder(tp: Any) -> _Decoder:
    dec = _DECODERS.get(tp)
    if dec is not None:
        return dec
    # A dataclass decoder exists before its fields are compiled (so recursive
    # records work): decoders are published only once the outermost compile
    # is complete, so other threads never see a half-built one.
    with _COMPILE_LOCK:
        dec = _DECODERS.get(tp) or _BUILDING.get(tp)
        if dec is not None:
            return dec
        outermost = not _BUILDING
        try:
            dec = _BUILDING[tp] = _compile(tp)
            if outermost:
                _DECODERS.update(_BUILDING)
        finally:
            if outermost:
                _BUILDING.clear()
    return dec


def _scalar(kind: type, name: str) -> _Decoder:
    def dec(v: Any) -> Any:
        if type(v) is not kind:  # bool is an int subclass: be exact
            raise _fail(name, v)
        return v

    return dec


def _dec_float(v: Any) -> float:
    if type(v) not in (float, int):
        raise _fail("a number", v)
    return float(v)


def _dec_any(v: Any) -> Any:
    return v


def _dec_none(v: Any) -> None:
    if v is not None:
        raise _fail("null", v)


def _compile_bytes(kind: type) -> _Decoder:
    def dec(v: Any) -> Any:
        if not (isinstance(v, dict) and len(v) == 1 and isinstance(v.get("$b"), str)):
            raise _fail('bytes ({"$b": base64})', v)
        try:
            return kind(base64.b64decode(v["$b"], validate=True))
        except (binascii.Error, ValueError):
            raise _fail("valid base64", v["$b"]) from None

    return dec


def _compile_enum(tp: type[enum.Enum]) -> _Decoder:
    def dec(v: Any) -> Any:
        try:
            return tp(v)
        except (ValueError, TypeError):
            raise _fail(f"a {tp.__name__} value", v) from None

    return dec


def _compile_union(args: tuple[Any, ...]) -> _Decoder:
    decs = [_decoder(a) for a in args if a is not type(None)]
    nullable = len(decs) != len(args)
    names = " | ".join(getattr(a, "__name__", str(a)) for a in args)

    def dec(v: Any) -> Any:
        if v is None and nullable:
            return None
        for d in decs:
            try:
                return d(v)
            except _Mismatch:
                continue
        raise _fail(names, v)

    return dec


def _compile_seq(item: Any, kind: Callable[[list[Any]], Any], name: str) -> _Decoder:
    di = _decoder(item)
    exact = item if item in _EXACT else None

    def dec(v: Any) -> Any:
        if type(v) is not list:
            raise _fail(name, v)
        if exact is not None and all(type(x) is exact for x in v):
            return kind(v)  # a list of plain ints or strings: nothing to convert
        out = []
        for i, x in enumerate(v):
            try:
                out.append(di(x))
            except _Mismatch as e:
                raise e.at(f"[{i}]") from None
        return kind(out)

    return dec


def _compile_tuple(args: tuple[Any, ...]) -> _Decoder:
    if not args or (len(args) == 2 and args[1] is Ellipsis):
        return _compile_seq(args[0] if args else Any, tuple, "a list")
    if args == ((),):  # tuple[()]
        args = ()
    decs = [_decoder(a) for a in args]

    def dec(v: Any) -> Any:
        if type(v) is not list or len(v) != len(decs):
            raise _fail(f"a list of {len(decs)} items", v)
        out = []
        for i, (d, x) in enumerate(zip(decs, v, strict=True)):
            try:
                out.append(d(x))
            except _Mismatch as e:
                raise e.at(f"[{i}]") from None
        return tuple(out)

    return dec


def _key_decoder(kt: Any) -> Callable[[str], Any]:
    if kt is str or kt is Any:
        return str
    if kt is int:
        return int
    if isinstance(kt, type) and issubclass(kt, enum.Enum):
        members = {str(m.value): m for m in kt}
        return members.__getitem__
    raise TypeError(f"unsupported dict key type {kt!r} in a record")


def _compile_dict(kt: Any, vt: Any) -> _Decoder:
    dk = _key_decoder(kt)
    dv = _decoder(vt)

    def dec(v: Any) -> Any:
        if type(v) is not dict:
            raise _fail("an object", v)
        out = {}
        for k, x in v.items():
            try:
                key = dk(k)
            except (ValueError, KeyError):
                raise _fail(f"keys of type {getattr(kt, '__name__', kt)}", k) from None
            try:
                out[key] = dv(x)
            except _Mismatch as e:
                raise e.at(f"[{k!r}]") from None
        return out

    return dec


# Declared types whose JSON value is the value itself: checked inline.
_EXACT = frozenset({int, str, bool})


def _compile_dataclass(cls: type) -> _Decoder:
    # Registered before its fields compile, so a record that contains
    # itself (a tree of processes) compiles.
    fields: list[tuple[str, type | None, _Decoder]] = []  # name, exact JSON type, decoder
    required: set[str] = set()

    def dec(v: Any) -> Any:
        if type(v) is not dict:
            raise _fail(f"a {cls.__name__} object", v)
        kwargs = {}
        for name, exact, d in fields:
            if name in v:
                x = v[name]
                try:
                    if exact is None:
                        x = d(x)
                    elif type(x) is not exact:
                        raise _fail(exact.__name__, x)
                except _Mismatch as e:
                    raise e.at(f".{name}") from None
                kwargs[name] = x
            elif name in required:
                raise _Mismatch(f"missing field {name!r}", cls.__name__)
        if len(kwargs) != len(v):
            extra = sorted(set(v) - set(kwargs))
            raise _Mismatch(
                f"unknown field(s) {', '.join(extra)} for {cls.__name__} "
                "(dump from a newer vzcpt?)",
                cls.__name__,
            )
        try:
            return cls(**kwargs)
        except (TypeError, ValueError) as e:
            raise _Mismatch(f"invalid {cls.__name__}: {e}", cls.__name__) from None

    _BUILDING[cls] = dec
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        tp = hints[f.name]
        fields.append((f.name, tp if tp in _EXACT else None, _decoder(tp)))
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            required.add(f.name)
    return dec


def _compile_literal(args: tuple[Any, ...]) -> _Decoder:
    def dec(v: Any) -> Any:
        # Exact type too: Literal[1] must not accept True.
        if not any(type(v) is type(a) and v == a for a in args):
            raise _fail(f"one of {args}", v)
        return v

    return dec


def _compile(tp: Any) -> _Decoder:
    if tp is Any:
        return _dec_any
    if tp is None or tp is type(None):
        return _dec_none
    if tp is bool or tp is int or tp is str:
        return _scalar(tp, tp.__name__)
    if tp is float:
        return _dec_float
    if tp is bytes or tp is bytearray:
        return _compile_bytes(tp)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return _compile_enum(tp)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _compile_dataclass(tp)
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union or origin is types.UnionType:
        return _compile_union(args)
    if origin is typing.Literal:
        return _compile_literal(args)
    if tp is list or origin is list:
        return _compile_seq(args[0] if args else Any, list, "a list")
    if tp is tuple or origin is tuple:
        return _compile_tuple(args)
    if tp in (frozenset, set) or origin in (frozenset, set):
        return _compile_seq(args[0] if args else Any, origin or tp, "a list")
    if tp is dict or origin is dict:
        return _compile_dict(*(args or (str, Any)))
    raise TypeError(f"unsupported type {tp!r} in a record")


def from_jsonable(tp: Any, value: Any) -> Any:
    """Rebuild a value of type `tp` from JSON data; CorruptDump if it does not fit."""
    try:
        return _decoder(tp)(value)
    except _Mismatch as e:
        raise e.corrupt() from None


def decode(data: bytes) -> object:
    """Rebuild a registered record from `encode` output."""
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise CorruptDump(f"record is not valid JSON: {e}") from None
    if type(doc) is not dict or set(doc) != {"t", "v"} or type(doc["t"]) is not str:
        raise CorruptDump('record has no tag: expected {"t": tag, "v": fields}')
    cls = _REGISTRY.get(doc["t"])
    if cls is None:
        raise CorruptDump(f"unknown record type {doc['t']!r} (dump from a newer vzcpt?)")
    try:
        return _decoder(cls)(doc["v"])
    except _Mismatch as e:
        raise CorruptDump(f"record {doc['t']!r}: {e.corrupt()}") from None
