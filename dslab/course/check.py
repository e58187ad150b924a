"""``dslab.check``: instant feedback on public cases. It never raises and prints exactly one line."""

from __future__ import annotations

import html

from dslab.course.answers import call, from_json, judge, to_json
from dslab.course.exercises import Exercise, find
from dslab.course.notebook import show

MIME = "application/vnd.dslab.check+json"
CALL_SECONDS = 5.0  # a public case is tiny; anything slower is a runaway loop, not a slow laptop


def run_cases(ex: Exercise, answer, cases) -> tuple[str, str]:
    """Run ``answer`` on ``cases`` -> (status, message); status is passed, failed or not-attempted.

    Each answer goes through the grader's codec and comparison (``dslab.course.answers``), so the verdict here is the
    one the grader would give on the same case.
    """
    for case in cases:
        result = call(answer, from_json(to_json(case.args)), CALL_SECONDS)  # a fresh copy, as the grader sends
        if result.get("error") == "NotImplementedError":
            why = result["message"] or "the stub still raises NotImplementedError"
            return "not-attempted", f"not attempted yet ({why})"
        if result.get("error") == "Timeout":
            return "failed", f"case '{case.label}' {result['message']}"
        if "error" in result:
            return "failed", f"case '{case.label}' raised {result['error']}: {result['message']}"
        if (diff := judge(ex, case, result)) is not None:
            hint = ex.hint_for(case, result["value"])
            return "failed", f"case '{case.label}': {diff}." + (f" Hint: {hint}" if hint else "")
    return "passed", f"public checks passed ({len(cases)} cases); hidden cases are graded separately"


def verdict(exercise_id: str, answer) -> tuple[str, str]:
    """(status, one-line message) for ``answer``; status is passed, failed, not-attempted or error."""
    try:
        ex = find(exercise_id)
    except Exception as e:  # noqa: BLE001
        return "error", str(e)
    head = f"{ex.id} (Exercise {ex.number})"
    if answer is None:
        return "not-attempted", f"{head}: not attempted yet: pass your function, e.g. check({ex.id!r}, {ex.target})"
    if not callable(answer):
        return "failed", f"{head}: expected a function such as {ex.target}, got {type(answer).__name__}"
    try:
        status, msg = run_cases(ex, answer, ex.public_cases())
    except Exception as e:  # noqa: BLE001 - learner errors are caught per call; this is a bad registry entry
        status, msg = "error", f"{type(e).__name__}: {e}"
    return status, f"{head}: {msg}"


_ICON = {"passed": "✅", "failed": "❌", "not-attempted": "⏳", "error": "⚠️"}
_COLOR = {"passed": "#1a7f37", "failed": "#cf222e", "not-attempted": "#9a6700", "error": "#cf222e"}


def check(exercise_id: str, answer=None) -> bool:
    """Print one line of feedback on ``answer`` for ``exercise_id``; True when the public cases pass."""
    try:
        status, msg = verdict(exercise_id, answer)
        _show(status, f"{_ICON[status]} {msg}", exercise_id)
        return status == "passed"
    except Exception as e:  # noqa: BLE001 - the promise is: never raise
        print(f"⚠️ dslab.check could not run: {type(e).__name__}: {e}")
        return False


def _show(status: str, line: str, exercise_id: str) -> None:
    html_line = f'<span style="color:{_COLOR[status]}">{html.escape(line)}</span>'
    show(line, {"text/html": html_line, MIME: {"id": exercise_id, "status": status}})
