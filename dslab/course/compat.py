"""Version checks a notebook runs in its set-up cell."""

from __future__ import annotations


def _parse(version: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in version.split("+")[0].split(".")[:3])
    except ValueError:
        raise ValueError(f"a version looks like '0.1.0', got {version!r}") from None


def require(version: str) -> None:
    """Raise RuntimeError, with the command that fixes it, when the installed dslab is older than ``version``."""
    import dslab

    if _parse(dslab.__version__) < _parse(version):
        raise RuntimeError(f"this notebook needs dslab >= {version}, but {dslab.__version__} is installed; "
                           "update it with `make setup` (or `pip install -e .` in the course folder)")
