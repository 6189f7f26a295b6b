"""Validation, parameter checks and substitution of step programs (no browser)."""

from __future__ import annotations

from typing import Any

import pytest

from events.errors import ValidationError
from services.runner.program import (
    MAX_STEPS,
    check_params,
    closest_match,
    referenced_params,
    render_step,
    substitute,
    validate_capabilities,
    validate_parameter_definitions,
    validate_steps,
)


def _problems(error: pytest.ExceptionInfo[ValidationError]) -> list[dict[str, Any]]:
    problems: list[dict[str, Any]] = error.value.details["problems"]
    return problems


# --- validate_steps -------------------------------------------------------------------------


def test_steps_normalized_with_defaults() -> None:
    steps = validate_steps(
        [
            {"action": "goto", "url": "https://shop.example/"},
            {"action": "click", "selector": "#buy"},
            {"action": "type", "selector": "#q", "text": ""},
            {"action": "extract", "name": "title", "selector": "h1"},
            {"action": "screenshot"},
            {"action": "scroll"},
            {
                "action": "paginate",
                "next": "a.next",
                "steps": [{"action": "extract", "name": "p", "selector": ".p", "multiple": True}],
            },
        ]
    )

    assert steps[0] == {"action": "goto", "url": "https://shop.example/"}
    assert steps[1] == {"action": "click", "selector": "#buy", "waitForNavigation": False}
    assert steps[2] == {"action": "type", "selector": "#q", "text": "", "clear": False}
    assert steps[3] == {"action": "extract", "name": "title", "selector": "h1", "multiple": False}
    assert steps[4] == {"action": "screenshot", "fullPage": False}
    assert steps[5] == {"action": "scroll", "to": "bottom", "times": 1, "waitMs": 500}
    assert steps[6]["maxPages"] == 10
    assert steps[6]["steps"] == [
        {"action": "extract", "name": "p", "selector": ".p", "multiple": True}
    ]


def test_steps_input_not_modified() -> None:
    original = [{"action": "click", "selector": "#buy"}]

    validate_steps(original)

    assert original == [{"action": "click", "selector": "#buy"}]


def test_steps_empty_program_allowed() -> None:
    assert validate_steps([]) == []


def test_steps_unknown_field_suggests_closest() -> None:
    steps = [
        {"action": "goto", "url": "https://shop.example/"},
        {"action": "hover", "selector": "#menu"},
        {"action": "click", "slector": "#buy"},
    ]

    with pytest.raises(ValidationError) as error:
        validate_steps(steps)

    assert error.value.message.startswith("The step program has 2 problems")
    assert (
        "steps[2].slector: Unknown field 'slector' for action 'click'. Did you mean 'selector'?"
        in error.value.message
    )
    assert _problems(error) == [
        {
            "path": "steps[2].slector",
            "message": "Unknown field 'slector' for action 'click'. Did you mean 'selector'?",
        },
        {
            "path": "steps[2].selector",
            "message": "Missing required field 'selector' for action 'click'.",
        },
    ]


def test_steps_unknown_action_suggests_closest() -> None:
    with pytest.raises(ValidationError) as error:
        validate_steps([{"action": "exract", "name": "x", "selector": "h1"}])

    assert (
        error.value.message == "steps[0].action: Unknown action 'exract'. Did you mean 'extract'?"
    )
    assert _problems(error) == [
        {"path": "steps[0].action", "message": "Unknown action 'exract'. Did you mean 'extract'?"}
    ]


def test_steps_every_problem_reported() -> None:
    steps = [
        {"action": "goto"},
        {"action": "clik", "selector": "#a"},
        "click",
        {"action": "waitFor"},
        {"action": "scroll", "times": 0},
    ]

    with pytest.raises(ValidationError) as error:
        validate_steps(steps)

    paths = [problem["path"] for problem in _problems(error)]
    assert paths == ["steps[0].url", "steps[1].action", "steps[2]", "steps[3]", "steps[4].times"]
    assert error.value.message.startswith("The step program has 5 problems")


@pytest.mark.parametrize(
    ("step", "path", "message_part"),
    [
        ({"url": "https://a.example/"}, "steps[0].action", "Missing required field 'action'"),
        ({"action": 3}, "steps[0].action", "Expected the action name as a string, got a number"),
        ({"action": "goto", "url": 5}, "steps[0].url", "Expected a string, got a number"),
        ({"action": "goto", "url": ""}, "steps[0].url", "Expected a non-empty string"),
        (
            {"action": "goto", "url": "file:///etc/passwd"},
            "steps[0].url",
            "Expected an absolute http or https URL",
        ),
        (
            {"action": "goto", "url": "/relative"},
            "steps[0].url",
            "Expected an absolute http or https URL",
        ),
        (
            {"action": "goto", "url": "javascript:alert(1)"},
            "steps[0].url",
            "Expected an absolute http or https URL",
        ),
        (
            {"action": "click", "selector": "#a", "waitForNavigation": "yes"},
            "steps[0].waitForNavigation",
            "Expected true or false",
        ),
        ({"action": "click", "selector": "#a", "label": 1}, "steps[0].label", "Expected a string"),
        (
            {"action": "click", "selector": "#a", "timeoutMs": 0},
            "steps[0].timeoutMs",
            "from 1 to 600000, got 0",
        ),
        (
            {"action": "click", "selector": "#a", "timeoutMs": 600_001},
            "steps[0].timeoutMs",
            "from 1 to 600000",
        ),
        (
            {"action": "click", "selector": "#a", "timeoutMs": 2.5},
            "steps[0].timeoutMs",
            "Expected an integer",
        ),
        (
            {"action": "click", "selector": "#a", "timeoutMs": True},
            "steps[0].timeoutMs",
            "Expected an integer, got a boolean",
        ),
        ({"action": "type", "selector": "#q"}, "steps[0].text", "Missing required field 'text'"),
        (
            {"action": "select", "selector": "#s", "value": []},
            "steps[0].value",
            "Expected a string or a list",
        ),
        (
            {"action": "select", "selector": "#s", "value": ["a", 2]},
            "steps[0].value[1]",
            "Expected a string",
        ),
        ({"action": "press"}, "steps[0].key", "Missing required field 'key'"),
        ({"action": "scroll", "waitMs": 60_001}, "steps[0].waitMs", "from 0 to 60000"),
        ({"action": "scroll", "times": 101}, "steps[0].times", "from 1 to 100"),
        (
            {"action": "waitFor", "selector": "#a", "ms": 5},
            "steps[0]",
            "exactly one of 'selector', 'navigation' or 'ms', got selector, ms",
        ),
        (
            {"action": "waitFor"},
            "steps[0]",
            "exactly one of 'selector', 'navigation' or 'ms', got none",
        ),
        ({"action": "waitFor", "navigation": False}, "steps[0].navigation", "Expected true"),
        (
            {"action": "waitFor", "ms": 5000, "timeoutMs": 1000},
            "steps[0].ms",
            "does not fit in the step's timeoutMs",
        ),
        ({"action": "evaluate"}, "steps[0].expression", "Missing required field 'expression'"),
        ({"action": "extract", "selector": "h1"}, "steps[0].name", "Missing required field 'name'"),
        (
            {"action": "extract", "name": "a", "selector": "h1", "fields": {}},
            "steps[0].fields",
            "Expected an object of 1 to 100 fields",
        ),
        (
            {"action": "extract", "name": "a", "selector": "h1", "fields": {"x": 1}},
            "steps[0].fields.x",
            "Expected a string",
        ),
        (
            {
                "action": "extract",
                "name": "a",
                "selector": "h1",
                "fields": {"x": {"selector": "a", "atribute": "href"}},
            },
            "steps[0].fields.x.atribute",
            "Did you mean 'attribute'?",
        ),
        (
            {
                "action": "extract",
                "name": "a",
                "selector": "h1",
                "fields": {"x": {"attribute": "href"}},
            },
            "steps[0].fields.x.selector",
            "Missing required key 'selector'",
        ),
        (
            {"action": "screenshot", "fullpage": True},
            "steps[0].fullpage",
            "Did you mean 'fullPage'?",
        ),
        ({"action": "assert"}, "steps[0].selector", "Missing required field 'selector'"),
        ({"action": "paginate", "next": "a"}, "steps[0].steps", "Missing required field 'steps'"),
        (
            {"action": "paginate", "next": "a", "steps": []},
            "steps[0].steps",
            "Expected at least one nested step",
        ),
        (
            {"action": "paginate", "next": "a", "steps": [{"action": "hover"}]},
            "steps[0].steps[0].selector",
            "Missing required field",
        ),
        (
            {"action": "paginate", "next": "a", "maxPages": 0, "steps": [{"action": "screenshot"}]},
            "steps[0].maxPages",
            "from 1 to 1000",
        ),
        (
            {
                "action": "paginate",
                "next": "a",
                "steps": [{"action": "paginate", "next": "b", "steps": [{"action": "screenshot"}]}],
            },
            "steps[0].steps[0].action",
            "cannot contain another paginate step",
        ),
        (
            {"action": "type", "selector": "#q", "text": "{{param.q}}"},
            "steps[0].text",
            "Unknown placeholder '{{param.q}}'",
        ),
        (
            {"action": "goto", "url": "{{bot.name}}"},
            "steps[0].url",
            "Unknown placeholder '{{bot.name}}'",
        ),
        (
            {"action": "click", "selector": "x" * 10_001},
            "steps[0].selector",
            "The maximum is 10000",
        ),
    ],
)
def test_steps_invalid_input_rejected(step: object, path: str, message_part: str) -> None:
    with pytest.raises(ValidationError) as error:
        validate_steps([step])

    problems = _problems(error)
    assert problems[0]["path"] == path
    assert message_part in problems[0]["message"]
    assert error.value.message.startswith(path) or "problems" in error.value.message


@pytest.mark.parametrize("value", [None, {}, "goto", 3])
def test_steps_non_list_rejected(value: object) -> None:
    with pytest.raises(ValidationError) as error:
        validate_steps(value)

    assert _problems(error)[0]["path"] == "steps"
    assert "Expected a JSON list of steps" in error.value.message


def test_steps_count_limit_includes_nested() -> None:
    nested = [{"action": "screenshot"}] * (MAX_STEPS - 1)
    accepted = [{"action": "paginate", "next": "a", "steps": nested}]
    rejected = [{"action": "paginate", "next": "a", "steps": [*nested, {"action": "screenshot"}]}]

    assert len(validate_steps(accepted)[0]["steps"]) == MAX_STEPS - 1
    with pytest.raises(ValidationError) as error:
        validate_steps(rejected)
    assert (
        "The program has 501 steps, nested steps included. The maximum is 500."
        in error.value.message
    )


def test_steps_placeholder_in_url_skips_scheme_check() -> None:
    steps = validate_steps([{"action": "goto", "url": "{{ bot.targetUrl }}/search?q={{params.q}}"}])

    assert steps[0]["url"] == "{{ bot.targetUrl }}/search?q={{params.q}}"


def test_steps_integral_float_normalized() -> None:
    steps = validate_steps([{"action": "click", "selector": "#a", "timeoutMs": 1500.0}])

    assert steps[0]["timeoutMs"] == 1500
    assert isinstance(steps[0]["timeoutMs"], int)


def test_steps_many_problems_truncated() -> None:
    with pytest.raises(ValidationError) as error:
        validate_steps([{"action": "hover"}] * 150)

    assert len(_problems(error)) == 100
    assert error.value.details["omittedProblems"] == 50
    assert error.value.message.startswith("The step program has 150 problems")


# --- closest_match --------------------------------------------------------------------------


def test_closest_match_picks_smallest_distance() -> None:
    assert closest_match("serchQuery", ["maxResults", "searchQuery", "sort"]) == "searchQuery"
    assert closest_match("x", []) is None


# --- parameters -----------------------------------------------------------------------------

_DEFINITIONS = {
    "searchQuery": {"type": "string", "required": True, "description": "Text to search for"},
    "maxResults": {"type": "integer", "default": 10},
    "sort": {"type": "string", "allowed": ["price", "rating"], "default": "price"},
    "tags": {"type": "array", "allowed": ["new", "sale"]},
    "password": {"type": "string", "secret": True, "allowed": ["open-sesame"]},
    "ratio": {"type": "number"},
    "debug": {"type": "boolean"},
    "filters": {"type": "object"},
}


def _definitions() -> dict[str, dict[str, Any]]:
    return validate_parameter_definitions(_DEFINITIONS)


def test_parameter_definitions_normalized() -> None:
    definitions = _definitions()

    assert definitions["searchQuery"] == {
        "type": "string",
        "required": True,
        "secret": False,
        "description": "Text to search for",
    }
    assert definitions["maxResults"] == {
        "type": "integer",
        "required": False,
        "secret": False,
        "description": "",
        "default": 10,
    }
    assert definitions["sort"]["allowed"] == ["price", "rating"]
    assert definitions["password"]["secret"] is True


@pytest.mark.parametrize(
    ("definitions", "path", "message_part"),
    [
        ({"1st": {"type": "string"}}, "parameters.1st", "Invalid parameter name"),
        ({"a-b": {"type": "string"}}, "parameters.a-b", "Invalid parameter name"),
        ({"q": "string"}, "parameters.q", "Expected a definition object"),
        ({"q": {}}, "parameters.q.type", "Expected one of string, number"),
        ({"q": {"type": "strng"}}, "parameters.q.type", "Did you mean 'string'?"),
        (
            {"q": {"type": "string", "requird": True}},
            "parameters.q.requird",
            "Did you mean 'required'?",
        ),
        (
            {"q": {"type": "string", "required": "yes"}},
            "parameters.q.required",
            "Expected true or false",
        ),
        (
            {"q": {"type": "string", "description": 3}},
            "parameters.q.description",
            "Expected a string",
        ),
        (
            {"q": {"type": "integer", "secret": True}},
            "parameters.q.secret",
            "Only string parameters can be secret",
        ),
        (
            {"q": {"type": "integer", "default": "3"}},
            "parameters.q.default",
            "The default must be an integer, got a string",
        ),
        (
            {"q": {"type": "integer", "default": 2.5}},
            "parameters.q.default",
            "got a number with a fractional part",
        ),
        (
            {"q": {"type": "number", "default": True}},
            "parameters.q.default",
            "must be a number, got a boolean",
        ),
        (
            {"q": {"type": "string", "allowed": ["a"], "default": "b"}},
            "parameters.q.default",
            "not one of the allowed values",
        ),
        (
            {"q": {"type": "string", "required": True, "default": "b"}},
            "parameters.q.default",
            "cannot have a default",
        ),
        (
            {"q": {"type": "string", "allowed": []}},
            "parameters.q.allowed",
            "Expected a list of 1 to 1000 values",
        ),
        (
            {"q": {"type": "integer", "allowed": [1, "2"]}},
            "parameters.q.allowed[1]",
            "Expected an integer",
        ),
        (
            {"q": {"type": "object", "allowed": [{}]}},
            "parameters.q.allowed",
            "not supported for object parameters",
        ),
        (
            {"q": {"type": "array", "allowed": [[1]]}},
            "parameters.q.allowed[0]",
            "Expected a string, number or boolean",
        ),
    ],
)
def test_parameter_definitions_invalid_rejected(
    definitions: object, path: str, message_part: str
) -> None:
    with pytest.raises(ValidationError) as error:
        validate_parameter_definitions(definitions)

    problems = _problems(error)
    assert problems[0]["path"] == path
    assert message_part in problems[0]["message"]


def test_parameter_definitions_not_object_rejected() -> None:
    with pytest.raises(ValidationError) as error:
        validate_parameter_definitions(["q"])

    assert (
        error.value.message
        == "parameters: Expected an object mapping parameter names to definitions, got a list."
    )


def test_parameter_definitions_none_is_empty() -> None:
    assert validate_parameter_definitions(None) == {}


def test_params_defaults_applied() -> None:
    params = check_params(
        _definitions(), {"searchQuery": "lamp", "maxResults": 5.0, "tags": ["sale"]}
    )

    assert params == {"searchQuery": "lamp", "maxResults": 5, "sort": "price", "tags": ["sale"]}
    assert isinstance(params["maxResults"], int)


def test_params_unknown_name_suggests_closest() -> None:
    with pytest.raises(ValidationError) as error:
        check_params(_definitions(), {"searchQuery": "lamp", "serchQuery": "lamp"})

    assert error.value.message == "Unknown parameter 'serchQuery'. Did you mean 'searchQuery'?"
    assert _problems(error) == [
        {
            "parameter": "serchQuery",
            "code": "unknown_parameter",
            "message": "Unknown parameter 'serchQuery'. Did you mean 'searchQuery'?",
            "suggestion": "searchQuery",
        }
    ]


def test_params_unknown_name_without_definitions() -> None:
    with pytest.raises(ValidationError) as error:
        check_params({}, {"x": 1})

    assert error.value.message == "Unknown parameter 'x'. This bot defines no parameters."
    assert "suggestion" not in _problems(error)[0]


def test_params_all_problems_reported() -> None:
    params = {
        "serchQuery": "lamp",
        "maxResults": 2.5,
        "sort": "name",
        "tags": ["sale", "old"],
        "ratio": True,
        "debug": "true",
        "filters": [],
    }

    with pytest.raises(ValidationError) as error:
        check_params(_definitions(), params)

    problems = _problems(error)
    assert [(problem["parameter"], problem["code"]) for problem in problems] == [
        ("serchQuery", "unknown_parameter"),
        ("searchQuery", "missing_parameter"),
        ("maxResults", "invalid_type"),
        ("sort", "value_not_allowed"),
        ("tags", "value_not_allowed"),
        ("ratio", "invalid_type"),
        ("debug", "invalid_type"),
        ("filters", "invalid_type"),
    ]
    assert problems[1]["message"] == "Missing required parameter 'searchQuery' of type string."
    assert (
        problems[2]["message"]
        == "Parameter 'maxResults' must be an integer, got a number with a fractional part."
    )
    assert (
        problems[3]["message"] == 'Parameter \'sort\' must be one of "price", "rating", got "name".'
    )
    assert problems[5]["message"] == "Parameter 'ratio' must be a number, got a boolean."
    assert error.value.message == (
        "The params have 8 problems, all listed in details.problems. "
        "The first is: Unknown parameter 'serchQuery'. Did you mean 'searchQuery'?"
    )


def test_params_boolean_is_not_integer() -> None:
    with pytest.raises(ValidationError) as error:
        check_params(_definitions(), {"searchQuery": "lamp", "maxResults": True})

    assert error.value.message == "Parameter 'maxResults' must be an integer, got a boolean."


def test_params_secret_value_not_in_message() -> None:
    with pytest.raises(ValidationError) as error:
        check_params(_definitions(), {"searchQuery": "lamp", "password": "hunter2-wrong"})

    assert error.value.message == "Parameter 'password' is not one of its allowed values."
    assert "hunter2-wrong" not in str(error.value.details)


@pytest.mark.parametrize("params", [[], "q=lamp", 3])
def test_params_not_object_rejected(params: object) -> None:
    with pytest.raises(ValidationError) as error:
        check_params(_definitions(), params)

    assert error.value.message.startswith("params must be a JSON object")


def test_params_none_means_empty() -> None:
    assert check_params({"q": {"type": "string", "required": False, "default": "x"}}, None) == {
        "q": "x"
    }


# --- capabilities ---------------------------------------------------------------------------


def test_capabilities_valid_copy() -> None:
    capabilities = {
        "proxy": False,
        "locale": "de-DE",
        "userAgent": "BotledgerTest/1.0",
        "timezone": "Europe/Berlin",
        "geolocation": {"latitude": 52.52, "longitude": 13.405},
        "adBlocking": True,
        "resolution": {"width": 1280, "height": 720},
        "timeout": 120,
    }

    assert validate_capabilities(capabilities) == capabilities


@pytest.mark.parametrize(
    ("capabilities", "path", "message_part"),
    [
        (
            {"timzone": "UTC"},
            "capabilities.timzone",
            "Unknown capability 'timzone'. Did you mean 'timezone'?",
        ),
        ({"proxy": "yes"}, "capabilities.proxy", "Expected true or false"),
        ({"locale": "en_US"}, "capabilities.locale", "BCP 47 language tag"),
        (
            {"userAgent": "a\r\nX-Injected: 1"},
            "capabilities.userAgent",
            "without control characters",
        ),
        ({"timezone": "Mars/Base"}, "capabilities.timezone", "IANA time zone name"),
        ({"timezone": "../etc/passwd"}, "capabilities.timezone", "IANA time zone name"),
        (
            {"geolocation": {"latitude": 91, "longitude": 0}},
            "capabilities.geolocation.latitude",
            "from -90 to 90",
        ),
        (
            {"geolocation": {"latitude": 0}},
            "capabilities.geolocation.longitude",
            "Missing required key 'longitude'",
        ),
        (
            {"geolocation": {"lat": 0, "longitude": 0}},
            "capabilities.geolocation.lat",
            "Did you mean 'latitude'?",
        ),
        (
            {"resolution": {"width": 199, "height": 600}},
            "capabilities.resolution.width",
            "from 200 to 7680",
        ),
        (
            {"resolution": {"width": 800, "height": 4321}},
            "capabilities.resolution.height",
            "from 200 to 4320",
        ),
        (
            {"resolution": {"width": 800.5, "height": 600}},
            "capabilities.resolution.width",
            "Expected an integer",
        ),
        ({"timeout": 0}, "capabilities.timeout", "from 1 to 3600"),
        ({"timeout": 3601}, "capabilities.timeout", "from 1 to 3600"),
        ({"timeout": True}, "capabilities.timeout", "from 1 to 3600"),
    ],
)
def test_capabilities_invalid_rejected(
    capabilities: dict[str, Any], path: str, message_part: str
) -> None:
    with pytest.raises(ValidationError) as error:
        validate_capabilities(capabilities)

    problems = _problems(error)
    assert problems[0]["path"] == path
    assert message_part in problems[0]["message"]


# --- substitution ---------------------------------------------------------------------------


def test_substitute_params_and_target_url() -> None:
    text = substitute(
        "{{ bot.targetUrl }}/search?q={{params.q}}&n={{  params.n }}&tags={{params.tags}}",
        {"q": "lamp", "n": 3, "tags": ["a", "b"]},
        {"targetUrl": "https://shop.example"},
    )

    assert text == 'https://shop.example/search?q=lamp&n=3&tags=["a","b"]'


def test_substitute_is_single_pass() -> None:
    text = substitute("{{params.a}}", {"a": "{{params.b}}", "b": "secret"}, {})

    assert text == "{{params.b}}"


def test_substitute_json_literals_for_expressions() -> None:
    text = substitute(
        "document.title + {{params.q}}", {"q": "'); alert(1); ('"}, {}, json_literals=True
    )

    assert text == "document.title + \"'); alert(1); ('\""


def test_substitute_undefined_param_rejected() -> None:
    with pytest.raises(ValidationError) as error:
        substitute("{{params.missing}}", {}, {})

    assert "parameter 'missing', which has no value" in error.value.message
    assert error.value.details == {"parameter": "missing"}


def test_render_step_substitutes_template_fields() -> None:
    [step] = validate_steps(
        [
            {
                "action": "extract",
                "name": "{{params.q}}",
                "selector": "#{{params.q}}",
                "fields": {
                    "a": "b.{{params.q}}",
                    "c": {"selector": "i.{{params.q}}", "attribute": "href"},
                },
            }
        ]
    )

    rendered = render_step(step, {"q": "x"}, {})

    assert rendered["name"] == "{{params.q}}"
    assert rendered["selector"] == "#x"
    assert rendered["fields"] == {"a": "b.x", "c": {"selector": "i.x", "attribute": "href"}}
    assert step["selector"] == "#{{params.q}}"


def test_referenced_params_includes_nested() -> None:
    steps = validate_steps(
        [
            {"action": "goto", "url": "{{bot.targetUrl}}?q={{params.query}}"},
            {"action": "select", "selector": "#s", "value": ["{{params.first}}", "b"]},
            {
                "action": "evaluate",
                "expression": "{{params.expr}} + 1",
                "name": "{{params.notUsed}}",
            },
            {
                "action": "paginate",
                "next": "{{params.nextSelector}}",
                "steps": [
                    {
                        "action": "extract",
                        "name": "p",
                        "selector": ".p",
                        "fields": {"x": "{{params.field}}"},
                    }
                ],
            },
        ]
    )

    assert referenced_params(steps) == {"query", "first", "expr", "nextSelector", "field"}
