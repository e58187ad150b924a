"""Runs inside a submission's kernel, last: calls the learner's functions on the hidden inputs and saves what they
return. It computes no verdict; the grader compares the answers with its own reference in its own process.
"""

from __future__ import annotations

import json
import os

from dslab.course import codec
from dslab.course.limits import CallTimeout, time_limit

CALL_SECONDS = 20.0


def _call(fn, args) -> dict:
    try:
        with time_limit(CALL_SECONDS):
            value = fn(*args)
        return {"value": codec.dumps(value)}
    except NotImplementedError as e:
        return {"error": "NotImplementedError", "message": str(e)[:300]}
    except CallTimeout as e:
        return {"error": "Timeout", "message": str(e)}
    except BaseException as e:  # noqa: BLE001 - SystemExit & co. are the learner's bug, reported per case
        if isinstance(e, KeyboardInterrupt):
            raise
        return {"error": type(e).__name__, "message": str(e)[:300]}


def collect(namespace: dict) -> None:
    """Answer each case in $DSLAB_GRADE_INPUTS with the functions in ``namespace``; write $DSLAB_GRADE_OUTPUTS."""
    with open(os.environ["DSLAB_GRADE_INPUTS"], encoding="utf-8") as f:
        request = json.load(f)
    answers = {}
    for ex in request["exercises"]:
        fn = namespace.get(ex["target"])
        if fn is None:
            answers[ex["id"]] = {"missing": f"no function named {ex['target']} was defined"}
        elif not callable(fn):
            answers[ex["id"]] = {"missing": f"{ex['target']} is a {type(fn).__name__}, not a function"}
        else:
            answers[ex["id"]] = {"results": [_call(fn, codec.loads(args)) for args in ex["cases"]]}
    tmp = os.environ["DSLAB_GRADE_OUTPUTS"] + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(answers, f)
    os.replace(tmp, os.environ["DSLAB_GRADE_OUTPUTS"])
    print(f"dslab grader: answers collected for {len(answers)} exercise(s)")
