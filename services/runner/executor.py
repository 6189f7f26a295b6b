"""Run a validated step program on a pyppeteer page.

``ProgramRunner.run`` executes the top-level steps in order, reports each one to a
``StepReporter`` and returns the extracted data. A failing step is reported with
``step_failed`` and raises ``StepError``. Cancellation (``asyncio.CancelledError``) passes
through untouched, so the caller decides what a cancelled or timed-out execution records.

Secret values are replaced with ``***`` in every message, log line, step output and in the
returned data. Typed text is never logged. Screenshots are stored as they are: a secret that
the page renders visibly stays visible in the image.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Collection, Mapping
from typing import Any, Final, Protocol

from pyppeteer.errors import PyppeteerError
from pyppeteer.us_keyboard_layout import keyDefinitions

from events.errors import BotledgerError, ValidationError
from services.runner.program import closest_match, render_step, url_scheme_problem, validate_steps

logger = logging.getLogger(__name__)

DEFAULT_STEP_TIMEOUT_MS: Final = 30_000
MASK: Final = "***"
MAX_REASON_CHARS: Final = 2_000

_CONSOLE_LEVELS: Final = {
    "debug": "debug",
    "warning": "warning",
    "error": "error",
    "assert": "error",
}


class StepError(BotledgerError):
    """A top-level step failed. ``index`` is the step's zero-based index in the program."""

    code = "step_failed"

    def __init__(self, index: int, message: str) -> None:
        super().__init__(message, details={"index": index})
        self.index = index


class StepReporter(Protocol):
    """Receiver of a program run's progress, implemented by the runner.

    ``log`` sources are "runner", "script" (the page's console output) and "system".
    Levels are "debug", "info", "warning" and "error".
    """

    async def step_started(self, index: int, step: dict[str, Any]) -> None: ...

    async def step_completed(self, index: int, data: object, duration_ms: int) -> None: ...

    async def step_failed(self, index: int, error: str, duration_ms: int) -> None: ...

    def log(self, source: str, level: str, message: str) -> None: ...

    async def save_artifact(self, name: str, data: bytes, content_type: str) -> str:
        """Store an artifact and return its object key."""
        ...


class _StepFailure(Exception):
    """A step could not do its work. The message is the reason shown to the user."""


def mask_secrets(value: Any, secrets: Collection[str]) -> Any:
    """Return a copy of a JSON-like value with every secret string replaced by ``***``.

    Longer secrets are replaced first, so a secret that contains another one is masked whole.
    Empty strings are ignored.
    """
    ordered = sorted({secret for secret in secrets if secret}, key=len, reverse=True)
    return _mask(value, ordered)


def _mask(value: Any, secrets: list[str]) -> Any:
    if not secrets:
        return value
    if isinstance(value, str):
        for secret in secrets:
            value = value.replace(secret, MASK)
        return value
    if isinstance(value, list):
        return [_mask(item, secrets) for item in value]
    if isinstance(value, dict):
        return {_mask(key, secrets): _mask(item, secrets) for key, item in value.items()}
    return value


@dataclasses.dataclass
class _Run:
    """State of one program run."""

    page: Any
    params: Mapping[str, Any]
    bot: Mapping[str, Any]
    reporter: StepReporter
    secrets: list[str]
    execution_id: str
    extracted: dict[str, Any] = dataclasses.field(default_factory=dict)
    # What the current step waits for, named in its timeout message.
    waiting_for: str = ""
    artifact_name: str = ""

    def mask(self, value: Any) -> Any:
        return _mask(value, self.secrets)

    def log(self, level: str, message: str) -> None:
        self.reporter.log("runner", level, self.mask(message))


class ProgramRunner:
    """Runner of step programs. One instance can serve many runs at once because it keeps no run state."""

    def __init__(self, *, default_step_timeout_ms: int = DEFAULT_STEP_TIMEOUT_MS) -> None:
        self.default_step_timeout_ms = default_step_timeout_ms

    async def run(
        self,
        page: Any,
        steps: object,
        params: Mapping[str, Any],
        bot: Mapping[str, Any],
        reporter: StepReporter,
        secrets: Collection[str] = frozenset(),
        *,
        execution_id: str = "",
    ) -> dict[str, Any]:
        """Run ``steps`` on ``page`` and return the extracted data with secrets masked.

        ``params`` are the checked execution params (defaults applied), ``bot`` the bot's
        fields (``targetUrl`` for placeholders). Raises StepError when a step fails.
        """
        program = validate_steps(steps)
        run = _Run(
            page=page,
            params=params,
            bot=bot,
            reporter=reporter,
            secrets=sorted({secret for secret in secrets if secret}, key=len, reverse=True),
            execution_id=execution_id,
        )
        logger.info("Step program started: execution=%s steps=%d", execution_id, len(program))
        listeners = _attach_page_listeners(run)
        try:
            for index, step in enumerate(program):
                await self._run_top_level_step(run, index, step)
        finally:
            _detach_page_listeners(page, listeners)

        logger.info("Step program completed: execution=%s steps=%d", execution_id, len(program))
        return dict(run.mask(run.extracted))

    async def _run_top_level_step(self, run: _Run, index: int, step: dict[str, Any]) -> None:
        action = step["action"]
        started = time.monotonic()
        await run.reporter.step_started(index, step)
        run.artifact_name = f"step-{index}"

        try:
            rendered = _render(run, step)
            if action == "paginate":
                data = await self._paginate(run, index, rendered)
            else:
                data = await self._perform_with_timeout(run, rendered)
        except _StepFailure as failure:
            duration_ms = _elapsed_ms(started)
            reason = run.mask(str(failure))
            run.log("error", f"Step {index} {action} failed after {duration_ms} ms: {reason}")
            logger.warning(
                "Step failed: execution=%s index=%d action=%s reason=%s",
                run.execution_id,
                index,
                action,
                reason,
            )
            await run.reporter.step_failed(index, reason, duration_ms)
            raise StepError(index, f"Step {index} ({action}) failed: {reason}") from None

        duration_ms = _elapsed_ms(started)
        run.log("info", f"Step {index} {_describe(rendered)} completed in {duration_ms} ms")
        await run.reporter.step_completed(index, run.mask(data), duration_ms)

    async def _perform_with_timeout(self, run: _Run, step: dict[str, Any]) -> Any:
        """Perform one non-paginate step within its timeout, translating errors to _StepFailure."""
        timeout_ms = self.step_timeout_ms(step)
        run.waiting_for = ""
        try:
            return await asyncio.wait_for(
                _ACTIONS[step["action"]](run, step, timeout_ms), timeout_ms / 1000
            )
        except TimeoutError:
            # Covers both asyncio's timeout and pyppeteer's own (a TimeoutError subclass).
            waiting = f" waiting for {run.waiting_for}" if run.waiting_for else ""
            raise _StepFailure(f"Timed out after {timeout_ms} ms{waiting}.") from None
        except PyppeteerError as error:
            raise _StepFailure(f"{_describe(step)}: {_first_line(error)}") from None
        except _StepFailure:
            raise
        except Exception as error:
            # The browser connection can also fail with websockets or OS errors. The step
            # fails cleanly, and the log gets no traceback because it would show the
            # unmasked message.
            reason = run.mask(f"{type(error).__name__}: {_first_line(error)}")
            logger.error(
                "Unexpected error in step: execution=%s action=%s error=%s",
                run.execution_id,
                step["action"],
                reason,
            )
            raise _StepFailure(f"{_describe(step)}: unexpected {reason}") from None

    def step_timeout_ms(self, step: Mapping[str, Any]) -> int:
        """Return a step's timeout: its timeoutMs, else the default plus its planned waits."""
        if "timeoutMs" in step:
            return int(step["timeoutMs"])
        planned_wait_ms = 0
        if step["action"] == "waitFor":
            planned_wait_ms = int(step.get("ms", 0))
        elif step["action"] == "scroll":
            planned_wait_ms = (int(step["times"]) - 1) * int(step["waitMs"])
        return self.default_step_timeout_ms + planned_wait_ms

    async def _paginate(self, run: _Run, index: int, step: dict[str, Any]) -> dict[str, int]:
        """Run the nested steps on each page, then follow ``next`` until it is gone or disabled.

        The loop also stops at ``maxPages`` and when ``next`` leads back to a URL already visited.
        ``next`` must trigger a navigation.
        """
        # NOTE: a next button that changes the page by script without navigating times out
        # here. Such pages need a program without paginate.
        turn_timeout_ms = int(step.get("timeoutMs", self.default_step_timeout_ms))
        visited = {run.page.url}
        pages = 0
        for page_number in range(1, step["maxPages"] + 1):
            pages = page_number
            for nested_index, nested in enumerate(step["steps"]):
                run.artifact_name = f"step-{index}-page-{page_number}-step-{nested_index}"
                await self._run_nested_step(
                    run, index, f"page {page_number} nested step {nested_index}", nested
                )

            if page_number == step["maxPages"]:
                break
            if not await self._turn_page(run, index, step["next"], page_number, turn_timeout_ms):
                break
            if run.page.url in visited:
                run.log(
                    "info",
                    f"Step {index} paginate stops: page {page_number + 1} is {run.page.url}, already visited",
                )
                break
            visited.add(run.page.url)
        return {"pages": pages}

    async def _run_nested_step(
        self, run: _Run, index: int, where: str, step: dict[str, Any]
    ) -> None:
        started = time.monotonic()
        try:
            rendered = _render(run, step)
            await self._perform_with_timeout(run, rendered)
        except _StepFailure as failure:
            raise _StepFailure(f"{where} ({step['action']}): {failure}") from None
        run.log(
            "info",
            f"Step {index} {where} {_describe(rendered)} completed in {_elapsed_ms(started)} ms",
        )

    async def _turn_page(
        self, run: _Run, index: int, next_selector: str, page_number: int, timeout_ms: int
    ) -> bool:
        """Click ``next`` and wait for the navigation. Return False when there is no next page."""
        try:
            state = await run.page.evaluate(_NEXT_LINK_STATE_JS, next_selector)
        except PyppeteerError as error:
            raise _StepFailure(
                f"page {page_number}: checking the next link '{next_selector}' failed: "
                f"{_first_line(error)}"
            ) from None
        if state != "enabled":
            run.log(
                "info",
                f"Step {index} paginate stops after page {page_number}: "
                f"the next link '{next_selector}' is {state}",
            )
            return False

        click = {
            "action": "click",
            "selector": next_selector,
            "waitForNavigation": True,
            "timeoutMs": timeout_ms,
        }
        try:
            await self._perform_with_timeout(run, click)
        except _StepFailure as failure:
            raise _StepFailure(f"page {page_number}: turning the page failed: {failure}") from None
        return True


# --- Actions --------------------------------------------------------------------------------

_Action = Callable[[_Run, dict[str, Any], int], Any]


async def _wait_for_element(run: _Run, selector: str, timeout_ms: int) -> None:
    run.waiting_for = f"an element matching '{selector}'"
    await run.page.waitForSelector(selector, {"timeout": timeout_ms})
    run.waiting_for = ""


async def _click_and_wait_for_navigation(run: _Run, selector: str, timeout_ms: int) -> None:
    run.waiting_for = f"the navigation after clicking '{selector}'"
    navigation = asyncio.ensure_future(run.page.waitForNavigation({"timeout": timeout_ms}))
    try:
        # Waiting starts before the click so that a fast navigation is not missed.
        await asyncio.gather(navigation, run.page.click(selector))
    finally:
        if not navigation.done():
            navigation.cancel()


async def _goto(run: _Run, step: dict[str, Any], timeout_ms: int) -> dict[str, Any]:
    url = step["url"]
    problem = url_scheme_problem(url)
    if problem is not None:
        raise _StepFailure(problem)

    run.waiting_for = f"{url} to load"
    response = await run.page.goto(url, {"timeout": timeout_ms, "waitUntil": "load"})
    return {"url": run.page.url, "status": response.status if response is not None else None}


async def _click(run: _Run, step: dict[str, Any], timeout_ms: int) -> None:
    await _wait_for_element(run, step["selector"], timeout_ms)
    if step["waitForNavigation"]:
        await _click_and_wait_for_navigation(run, step["selector"], timeout_ms)
    else:
        await run.page.click(step["selector"])


async def _type(run: _Run, step: dict[str, Any], timeout_ms: int) -> None:
    await _wait_for_element(run, step["selector"], timeout_ms)
    # Without clear the text is appended, as after a click at the end of the field: a
    # programmatic focus alone would leave the caret at the start.
    script = _CLEAR_JS if step["clear"] else _CARET_TO_END_JS
    await run.page.querySelectorEval(step["selector"], script)
    await run.page.type(step["selector"], step["text"])


async def _select(run: _Run, step: dict[str, Any], timeout_ms: int) -> dict[str, list[str]]:
    selector = step["selector"]
    values = step["value"] if isinstance(step["value"], list) else [step["value"]]
    await _wait_for_element(run, selector, timeout_ms)
    selected = list(await run.page.select(selector, *values))

    missing = [value for value in values if value not in selected]
    if missing:
        raise _StepFailure(
            f"Could not select the value '{missing[0]}' in '{selector}': the element has no such option, "
            "or it allows only one choice and several values were given."
        )
    return {"values": selected}


async def _press(run: _Run, step: dict[str, Any], timeout_ms: int) -> None:
    key = step["key"]
    if key not in keyDefinitions:
        suggestion = closest_match(key, keyDefinitions)
        raise _StepFailure(f"Unknown key '{key}'. Did you mean '{suggestion}'?")

    if "selector" in step:
        await _wait_for_element(run, step["selector"], timeout_ms)
        await run.page.focus(step["selector"])
    await run.page.keyboard.press(key)


async def _hover(run: _Run, step: dict[str, Any], timeout_ms: int) -> None:
    await _wait_for_element(run, step["selector"], timeout_ms)
    await run.page.hover(step["selector"])


async def _scroll(run: _Run, step: dict[str, Any], timeout_ms: int) -> None:
    if step["to"] != "bottom":
        await _wait_for_element(run, step["to"], timeout_ms)
        await run.page.querySelectorEval(
            step["to"], "(element) => element.scrollIntoView({block: 'center'})"
        )
        return

    for scroll_number in range(step["times"]):
        if scroll_number > 0:
            # The wait between scrolls gives an infinite-scroll page time to load more content.
            await asyncio.sleep(step["waitMs"] / 1000)
        await run.page.evaluate(_SCROLL_TO_BOTTOM_JS)


async def _wait_for(run: _Run, step: dict[str, Any], timeout_ms: int) -> None:
    if "selector" in step:
        await _wait_for_element(run, step["selector"], timeout_ms)
    elif step.get("navigation"):
        run.waiting_for = "a navigation"
        await run.page.waitForNavigation({"timeout": timeout_ms})
    else:
        await asyncio.sleep(step["ms"] / 1000)


async def _evaluate(run: _Run, step: dict[str, Any], timeout_ms: int) -> Any:
    # force_expr runs the text as a script: its completion value is the result, and a
    # promise is awaited. A value that JSON cannot represent (a function, a DOM node)
    # comes back as an empty object.
    result = await run.page.evaluate(step["expression"], force_expr=True)
    if "name" in step:
        run.extracted[step["name"]] = result
    return result


async def _extract(run: _Run, step: dict[str, Any], timeout_ms: int) -> Any:
    fields = step.get("fields")
    field_specs = (
        None if fields is None else [_field_spec(name, spec) for name, spec in fields.items()]
    )
    outcome = await run.page.evaluate(_EXTRACT_JS, step["selector"], field_specs, step["multiple"])
    if not outcome["found"]:
        raise _StepFailure(
            f"No element matches selector '{step['selector']}' (extract '{step['name']}')."
        )

    value = outcome["value"]
    if fields is not None:
        value = [dict(record) for record in value] if step["multiple"] else dict(value)
    _store_extracted(run.extracted, step["name"], value, multiple=step["multiple"])
    return value


def _field_spec(name: str, spec: str | dict[str, str]) -> list[str | None]:
    if isinstance(spec, str):
        return [name, spec, None]
    return [name, spec["selector"], spec.get("attribute")]


def _store_extracted(extracted: dict[str, Any], name: str, value: Any, *, multiple: bool) -> None:
    """Write ``value`` under ``name``. A multiple extract appends to an existing list."""
    existing = extracted.get(name)
    if multiple and isinstance(existing, list):
        existing.extend(value)
    else:
        extracted[name] = value


async def _screenshot(run: _Run, step: dict[str, Any], timeout_ms: int) -> dict[str, str]:
    image = await run.page.screenshot({"type": "png", "fullPage": step["fullPage"]})
    key = await run.reporter.save_artifact(f"{run.artifact_name}.png", image, "image/png")
    return {"key": key}


async def _assert(run: _Run, step: dict[str, Any], timeout_ms: int) -> None:
    selector = step["selector"]
    text = await run.page.evaluate(_TEXT_CONTENT_JS, selector)
    if text is None:
        raise _StepFailure(f"Assertion failed: no element matches selector '{selector}'.")

    expected = step.get("textContains")
    # Whitespace is collapsed on both sides because markup indentation is not visible text.
    if expected is not None and " ".join(expected.split()) not in " ".join(text.split()):
        raise _StepFailure(
            f"Assertion failed: the element matching '{selector}' does not contain the text '{expected}'. "
            f"Its text is '{_shorten(' '.join(text.split()), 200)}'."
        )


_ACTIONS: Final[dict[str, _Action]] = {
    "goto": _goto,
    "click": _click,
    "type": _type,
    "select": _select,
    "press": _press,
    "hover": _hover,
    "scroll": _scroll,
    "waitFor": _wait_for,
    "evaluate": _evaluate,
    "extract": _extract,
    "screenshot": _screenshot,
    "assert": _assert,
}


# --- Page scripts ---------------------------------------------------------------------------

_CLEAR_JS: Final = """(element) => {
  element.focus();
  if ('value' in element) {
    element.value = '';
  } else if (element.isContentEditable) {
    element.textContent = '';
  }
  element.dispatchEvent(new Event('input', {bubbles: true}));
}"""

_CARET_TO_END_JS: Final = """(element) => {
  element.focus();
  if (typeof element.value === 'string' && typeof element.setSelectionRange === 'function') {
    try {
      element.setSelectionRange(element.value.length, element.value.length);
    } catch (error) {
      // Inputs such as type=email and type=number have no selection, so the caret stays.
    }
  }
}"""

_SCROLL_TO_BOTTOM_JS: Final = """() => {
  const root = document.scrollingElement || document.documentElement;
  window.scrollTo(0, root.scrollHeight);
}"""

_TEXT_CONTENT_JS: Final = """(selector) => {
  const element = document.querySelector(selector);
  return element === null ? null : (element.textContent || '');
}"""

# Records come back as [name, value] pairs: a plain object would lose a field named __proto__.
# The field selector ':scope' reads the record element itself.
_EXTRACT_JS: Final = """(selector, fields, multiple) => {
  const text = (element) => (element.textContent || '').trim();
  const read = (root) => {
    if (fields === null) {
      return text(root);
    }
    return fields.map(([name, fieldSelector, attribute]) => {
      const element = fieldSelector === ':scope' ? root : root.querySelector(fieldSelector);
      if (element === null) {
        return [name, null];
      }
      return [name, attribute === null ? text(element) : element.getAttribute(attribute)];
    });
  };
  if (multiple) {
    return {found: true, value: Array.from(document.querySelectorAll(selector), read)};
  }
  const element = document.querySelector(selector);
  return element === null ? {found: false, value: null} : {found: true, value: read(element)};
}"""

_NEXT_LINK_STATE_JS: Final = """(selector) => {
  const element = document.querySelector(selector);
  if (element === null) {
    return 'missing';
  }
  if (element.disabled || element.getAttribute('aria-disabled') === 'true') {
    return 'disabled';
  }
  return 'enabled';
}"""


# --- Page events ----------------------------------------------------------------------------

_Listeners = list[tuple[str, Callable[..., None]]]


def _attach_page_listeners(run: _Run) -> _Listeners:
    """Forward the page's console output and uncaught errors to the reporter, and close dialogs.

    pyppeteer calls these handlers synchronously, so they only log or schedule work.
    """

    def on_console(message: Any) -> None:
        level = _CONSOLE_LEVELS.get(message.type, "info")
        _report_script_output(run, level, message.text)
        for handle in message.args:
            _schedule(handle.dispose(), "dispose a console argument", run.execution_id)

    def on_page_error(error: Exception) -> None:
        _report_script_output(run, "error", f"Uncaught {error}")

    def on_dialog(dialog: Any) -> None:
        # An open dialog blocks every later step. Alerts and beforeunload prompts are accepted,
        # confirm and prompt dialogs are dismissed (the user's "Cancel").
        accept = dialog.type in ("alert", "beforeunload")
        run.log(
            "info",
            f"Closed the {dialog.type} dialog ({'accepted' if accept else 'dismissed'}): {dialog.message}",
        )
        _schedule(
            dialog.accept() if accept else dialog.dismiss(), "close a dialog", run.execution_id
        )

    listeners: _Listeners = [
        ("console", on_console),
        ("pageerror", on_page_error),
        ("dialog", on_dialog),
    ]
    for event, handler in listeners:
        run.page.on(event, handler)
    return listeners


def _detach_page_listeners(page: Any, listeners: _Listeners) -> None:
    for event, handler in listeners:
        page.remove_listener(event, handler)


def _report_script_output(run: _Run, level: str, text: str) -> None:
    try:
        run.reporter.log("script", level, run.mask(text))
    except Exception as error:
        logger.error(
            "Reporter failed to log script output: execution=%s error=%r", run.execution_id, error
        )


def _schedule(coroutine: Any, purpose: str, execution_id: str) -> None:
    task = asyncio.ensure_future(coroutine)

    def log_failure(done: asyncio.Future[Any]) -> None:
        if not done.cancelled() and done.exception() is not None:
            logger.warning(
                "Failed to %s: execution=%s error=%s", purpose, execution_id, done.exception()
            )

    task.add_done_callback(log_failure)


# --- Helpers --------------------------------------------------------------------------------


def _render(run: _Run, step: dict[str, Any]) -> dict[str, Any]:
    try:
        return render_step(step, run.params, run.bot)
    except ValidationError as error:
        raise _StepFailure(error.message) from None


def _describe(step: Mapping[str, Any]) -> str:
    """Summarize a rendered step for a log line. Typed text and expressions are left out."""
    action = step["action"]
    if action == "goto":
        return f"goto {step['url']}"
    if action in ("click", "select", "hover", "assert"):
        return f"{action} '{step['selector']}'"
    if action == "type":
        return f"type into '{step['selector']}'"
    if action == "press":
        target = f" in '{step['selector']}'" if "selector" in step else ""
        return f"press {step['key']}{target}"
    if action == "scroll":
        return f"scroll to {step['to']}" + (f" {step['times']} times" if step["times"] > 1 else "")
    if action == "waitFor":
        if "selector" in step:
            return f"waitFor '{step['selector']}'"
        return "waitFor navigation" if step.get("navigation") else f"waitFor {step['ms']} ms"
    if action == "evaluate":
        return f"evaluate into '{step['name']}'" if "name" in step else "evaluate"
    if action == "extract":
        return f"extract '{step['name']}' from '{step['selector']}'"
    if action == "screenshot":
        return "screenshot (full page)" if step["fullPage"] else "screenshot"
    return f"paginate over '{step['next']}'"


def _first_line(error: BaseException) -> str:
    """Return an error's first line: pyppeteer appends the page's JavaScript stack."""
    lines = str(error).strip().splitlines()
    return _shorten(lines[0] if lines else type(error).__name__)


def _shorten(text: str, max_chars: int = MAX_REASON_CHARS) -> str:
    return text if len(text) <= max_chars else text[: max_chars - 3] + "..."


def _elapsed_ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)
