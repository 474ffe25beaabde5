"""`spec.filter`: a CEL expression over ``event`` = ``{type, id, createdAt, data}`` (pure).

Compiled once per spec generation with ``common-expression-language`` (the Rust ``cel``
interpreter). Only its compiled extension is loaded: the package's ``__init__`` also imports
its command-line tool (typer, rich, prompt_toolkit: about 25 MB) that the operator never uses.
The library parses but does not type-check or meter cost, so both are done here: a filter may
name only ``event`` (and the variables its own macros bind) and functions CEL defines, may nest
at most ``MAX_NESTING`` comprehensions, and an evaluation whose worst case
(``event`` size ** nesting) exceeds ``COST_LIMIT`` is not run: it counts as not matching.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import os
import re
from dataclasses import dataclass
from types import ModuleType
from typing import Any

MAX_FILTER_LENGTH = 4096  # also the CRD's maxLength
MAX_NESTING = 2  # comprehensions (all, exists, exists_one, map, filter) inside one another
COST_LIMIT = 1_000_000  # worst-case steps: (values in event) ** nesting, times the expression's length
MACROS = ("all", "exists", "exists_one", "map", "filter")
# Functions and operators of the CEL standard definitions (and those the interpreter adds).
FUNCTIONS = frozenset(
    {
        "size", "contains", "startsWith", "endsWith", "matches", "has", "int", "uint", "double", "string",
        "bytes", "bool", "timestamp", "duration", "type", "dyn", "max", "min", "getFullYear", "getMonth",
        "getDayOfYear", "getDayOfMonth", "getDate", "getDayOfWeek", "getHours", "getMinutes", "getSeconds",
        "getMilliseconds", "lowerAscii", "upperAscii", "trim", "split", "join", "replace", "indexOf",
        "lastIndexOf", "substring", "charAt", "format", "optional", "or", "orValue", "hasValue", "value",
        *MACROS,
    }
)  # fmt: skip
_BOUND_RE = re.compile(r"\.\s*(?:all|exists|exists_one|map|filter)\s*\(\s*([A-Za-z_][A-Za-z0-9_]*)\s*,")
_STRING_RE = re.compile(r"""(?:[rRbB]{0,2})("""
                        r'''"""(?:\\.|[^\\])*?"""|'''
                        r"""'''(?:\\.|[^\\])*?'''|"""
                        r'''"(?:\\.|[^"\\\n])*"|'''
                        r"""'(?:\\.|[^'\\\n])*')""", re.S)  # fmt: skip


class FilterError(Exception):
    """The filter cannot be used: the message says why, in the compiler's words where it has them."""


def _load_cel() -> ModuleType:
    spec = importlib.util.find_spec("cel")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the common-expression-language package is not installed")
    for directory in spec.submodule_search_locations:
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            path = os.path.join(directory, "cel" + suffix)
            if os.path.exists(path):
                ext = importlib.util.spec_from_file_location("cel.cel", path)
                assert ext is not None and ext.loader is not None
                module = importlib.util.module_from_spec(ext)
                ext.loader.exec_module(module)
                return module
    raise ImportError("the common-expression-language package has no compiled extension")


_cel: ModuleType | None = None


def _engine() -> ModuleType:
    global _cel
    if _cel is None:
        _cel = _load_cel()
    return _cel


def comprehension_nesting(source: str) -> int:
    """How deeply the expression nests comprehension macros, read from its text (strings skipped)."""
    text = _STRING_RE.sub('""', source)
    deepest = 0
    stack: list[bool] = []  # one per open parenthesis: does it open a macro call?
    for match in re.finditer(r"\.\s*(?:all|exists|exists_one|map|filter)\s*\(|\(|\)", text):
        token = match.group(0)
        if token == ")":
            if stack:
                stack.pop()
            continue
        stack.append(token != "(")
        deepest = max(deepest, sum(stack))
    return deepest


@dataclass(frozen=True)
class CompiledFilter:
    source: str
    program: Any
    nesting: int

    def cost(self, event: dict[str, Any]) -> int:
        return max(1, _values(event)) ** max(1, self.nesting) * max(1, len(self.source) // 64)

    def evaluate(self, event: dict[str, Any]) -> bool:
        """True when ``event`` passes; raises FilterError when it cannot tell (counted as not matching)."""
        if self.cost(event) > COST_LIMIT:
            raise FilterError(f"cost limit exceeded: this event is too large for {self.nesting} nested comprehensions")
        try:
            result = self.program.execute({"event": event})
        except Exception as exc:  # the interpreter raises KeyError, TypeError, ValueError, RuntimeError...
            raise FilterError(f"{type(exc).__name__}: {exc}"[:300]) from None
        if not isinstance(result, bool):
            raise FilterError(f"the filter gave a {type(result).__name__}, not a bool")
        return result


def _values(value: Any) -> int:
    """Values in a JSON document, containers included: the length of the longest list a filter can walk."""
    if isinstance(value, dict):
        return 1 + sum(_values(v) for v in value.values())
    if isinstance(value, list):
        return 1 + sum(_values(v) for v in value)
    return 1


def compile_filter(source: str) -> CompiledFilter:
    """Compile and check ``source``; raises FilterError with a message for ``spec.filter``."""
    if len(source) > MAX_FILTER_LENGTH:
        raise FilterError(f"longer than {MAX_FILTER_LENGTH} characters")
    try:
        program = _engine().compile(source)
    except Exception as exc:  # ValueError for a syntax error
        raise FilterError(" ".join(str(exc).split())[:900]) from None
    bound = set(_BOUND_RE.findall(_STRING_RE.sub('""', source)))
    unknown = [v for v in program.variables() if v != "event" and v not in bound]
    if unknown:
        raise FilterError(
            f"undeclared reference to {', '.join(repr(v) for v in unknown)}: the only variable is 'event' "
            "(event.type, event.id, event.createdAt, event.data)"
        )
    functions = [f for f in program.functions() if not (f[:1] in "_@!" or f in FUNCTIONS)]
    if functions:
        raise FilterError(f"undeclared reference to function {', '.join(repr(f) for f in functions)}")
    nesting = comprehension_nesting(source)
    if nesting > MAX_NESTING:
        raise FilterError(
            f"cost limit: {nesting} comprehensions nested inside one another; at most {MAX_NESTING} are allowed"
        )
    return CompiledFilter(source=source, program=program, nesting=nesting)


def filter_input(event: str, event_id: str, created_at: str, data: Any) -> dict[str, Any]:
    """The ``event`` variable: the same fields the body carries, ``data`` as JSON values."""
    return {"type": event, "id": event_id, "createdAt": created_at, "data": _json_values(data)}


def _json_values(data: Any) -> Any:
    # What the API server returned is JSON already; a value the interpreter cannot take (a tuple) is normalised.
    if isinstance(data, (dict, list, str, int, float, bool)) or data is None:
        return data
    return json.loads(json.dumps(data))
