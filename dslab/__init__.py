"""dslab: build the engineering behind DeepSeek-V3 and R1, one notebook at a time.

The ML components live in modules named after the paper concept they implement (``dslab.moe``, ``dslab.mla``, ...);
the course tooling (build, check, grade, doctor) lives apart in ``dslab.course``. Only the few names a notebook needs
on its first line are re-exported here.
"""

__version__ = "0.1.0"

from dslab.runtime import is_headless, pick_device, progress, seed_everything  # noqa: E402


def check(exercise: str, answer=None) -> None:
    """Instant feedback on an exercise (public cases only). Never raises; prints exactly one line.

    Example: ``dslab.check("00.mla_params", mla_params)``. (``dslab.course.check.check`` returns the verdict as a bool.)
    """
    from dslab.course.check import check as _check  # imported lazily: the ML modules never load course tooling

    _check(exercise, answer)


def record(**numbers) -> None:
    """Show a notebook's key numbers on one line; ``make run`` collects them into its summary."""
    from dslab.course.results import record as _record

    _record(**numbers)


def require(version: str) -> None:
    """Fail early, with the fix, when the installed dslab is older than the notebook needs."""
    from dslab.course.compat import require as _require

    _require(version)


__all__ = ["__version__", "check", "is_headless", "pick_device", "progress", "record", "require", "seed_everything"]
