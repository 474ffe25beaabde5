"""spec.filter: compiling, the checks the CEL library leaves to us, the cost bound, evaluation."""

from __future__ import annotations

import subprocess
import sys

import pytest

from webhook_operator.filter import (
    COST_LIMIT,
    MAX_FILTER_LENGTH,
    FilterError,
    compile_filter,
    comprehension_nesting,
    filter_input,
)


def event(data: object, type_: str = "User.Created") -> dict[str, object]:
    return filter_input(type_, "evt_1", "2026-01-02T03:04:05.000Z", data)


def test_the_contract_example_matches_pro_users_only() -> None:
    compiled = compile_filter('event.type.startsWith("User.") && event.data.plan == "pro"')
    assert compiled.evaluate(event({"plan": "pro"})) is True
    assert compiled.evaluate(event({"plan": "free"})) is False
    assert compiled.evaluate(event({"plan": "pro"}, "Organization.Created")) is False


def test_id_and_created_at_are_the_bodys_values() -> None:
    compiled = compile_filter('event.id == "evt_1" && event.createdAt.startsWith("2026-01-02T")')
    assert compiled.evaluate(event(None)) is True


def test_has_guards_a_missing_field_and_lists_can_be_walked() -> None:
    assert compile_filter("has(event.data.plan)").evaluate(event({})) is False
    compiled = compile_filter('event.data.tags.exists(t, t == "vip")')
    assert compiled.evaluate(event({"tags": ["a", "vip"]})) is True
    assert compiled.evaluate(event({"tags": []})) is False


def test_a_missing_field_or_a_non_bool_result_is_a_runtime_error() -> None:
    with pytest.raises(FilterError, match="plan"):
        compile_filter('event.data.plan == "pro"').evaluate(event({}))
    with pytest.raises(FilterError, match="not a bool"):
        compile_filter("size(event.type)").evaluate(event({}))


@pytest.mark.parametrize(
    ("source", "words"),
    [
        ("event.type ==", "Syntax error"),
        ('plan == "pro"', "undeclared reference to 'plan'"),
        ("fetch(event.id)", "undeclared reference to function 'fetch'"),
        ("event.data.a.all(x, x.b.all(y, y.c.exists(z, z)))", "3 comprehensions nested"),
        ("x" * (MAX_FILTER_LENGTH + 1), f"longer than {MAX_FILTER_LENGTH}"),
    ],
)
def test_a_filter_that_does_not_compile_or_check_says_why(source: str, words: str) -> None:
    with pytest.raises(FilterError, match=words):
        compile_filter(source)


def test_macro_variables_are_declared_by_their_macro() -> None:
    compiled = compile_filter("event.data.items.all(item, item.price > 0)")
    assert compiled.evaluate(event({"items": [{"price": 1}, {"price": 2}]})) is True


def test_nesting_is_read_from_the_text_with_strings_skipped() -> None:
    assert comprehension_nesting('event.type == "x.all(a, b.map(c, d))"') == 0
    assert comprehension_nesting("event.data.a.map(x, x.b.filter(y, y)).exists(z, z)") == 2
    assert comprehension_nesting("event.data.a.exists(x, x) && event.data.b.exists(y, y)") == 1


def test_an_event_too_large_for_the_filters_nesting_is_not_evaluated() -> None:
    compiled = compile_filter("event.data.a.exists(x, event.data.a.exists(y, x == y))")
    small = event({"a": list(range(10))})
    assert compiled.evaluate(small) is True
    big = event({"a": list(range(int(COST_LIMIT**0.5) + 10))})
    with pytest.raises(FilterError, match="cost limit"):
        compiled.evaluate(big)


def test_only_the_compiled_extension_is_loaded_not_the_cli() -> None:
    # In a fresh interpreter: other tests in this process may have imported anything.
    code = (
        "import sys; from webhook_operator.filter import compile_filter; compile_filter('true'); "
        "sys.exit(1 if 'typer' in sys.modules or 'rich' in sys.modules else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr or "the CEL package's CLI (typer, rich) was loaded"
