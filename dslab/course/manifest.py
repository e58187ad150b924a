"""What a grading batch keeps on disk, and when it trusts it again.

Every file the grader writes is written atomically (a reader never sees half of it) and hashed as it is written.
``OUT/manifest.json`` lists each finished report with its submission's sha256 and its own, so ``--resume`` takes a
report from an earlier run only when neither changed. ``package_digest`` hashes the grader's own code and exercise
registry: a batch stops (``GraderChanged``) when it changes, since reports graded by two graders are not one batch.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path

import dslab

MANIFEST = "manifest.json"
MAX_MANIFEST_BYTES = 50_000_000


class GraderChanged(RuntimeError):
    """The grader's own code or exercise registry changed while a batch ran."""


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def write_atomic(path: Path, text: str) -> str:
    """Write ``text`` to ``path`` through a temporary file beside it; returns its sha256."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return sha256(text)


def read_json(path: Path, limit: int) -> dict:
    """A JSON file the submission could have written: size-checked before parsing; {} when absent or unreadable."""
    try:
        if not path.is_file() or path.stat().st_size > limit:
            return {}
        data = json.loads(path.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def report_text(report: dict) -> str:
    """A report as written to ``OUT/<name>.json`` (and hashed in the manifest)."""
    return json.dumps(report, indent=2, sort_keys=True) + "\n"


def package_digest() -> str:
    """sha256 of the grader's own code and exercise registry (every .py and .json file of the dslab package)."""
    root = Path(dslab.__file__).resolve().parent
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.suffix in (".py", ".json") and "__pycache__" not in p.parts):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def load_manifest(out: Path) -> dict:
    """The manifest an earlier run left in ``out`` ({} when there is none, or it is not the grader's)."""
    data = read_json(out / MANIFEST, MAX_MANIFEST_BYTES)
    return data if data.get("grader") == "dslab" else {}


class Manifest:
    """``OUT/manifest.json`` of the batch being graded: rewritten after every report, so a stopped batch resumes.

    done: the entries an earlier run left ({} for a fresh batch); their reports are reused only when unchanged.
    """

    def __init__(self, out: Path, grading_seed: int, digest: str, done: dict):
        self.out, self.done = out, done
        self.data = {"grader": "dslab", "grading_seed": grading_seed, "package": digest, "reports": dict(done)}
        self.lock = threading.Lock()

    def saved_report(self, name: str, submission_sha256: str | None) -> dict | None:
        """The report an earlier run wrote for ``name``, when its submission and the file itself are unchanged."""
        entry = self.done.get(name, {})
        if not entry or entry.get("submission_sha256") != submission_sha256:
            return None
        saved = self.out / f"{name}.json"
        text = saved.read_text(encoding="utf-8") if saved.is_file() else ""
        return json.loads(text) if sha256(text) == entry.get("report_sha256") else None

    def record(self, report: dict) -> None:
        """Write one finished report and the manifest that now lists it."""
        with self.lock:
            self._enter(report, write_atomic(self.out / f"{report['name']}.json", report_text(report)))
            self.save()

    def rewrite(self, reports: list[dict]) -> None:
        """Write every report again from memory and read it back: what is on disk is what was graded."""
        for report in reports:
            path = self.out / f"{report['name']}.json"
            sha = write_atomic(path, report_text(report))
            if hashlib.sha256(path.read_bytes()).hexdigest() != sha:
                raise GraderChanged(f"{self.out / report['name']}.json changed while being written")
            self._enter(report, sha)

    def save(self) -> None:
        write_atomic(self.out / MANIFEST, json.dumps(self.data, indent=1, sort_keys=True) + "\n")

    def _enter(self, report: dict, report_sha256: str) -> None:
        self.data["reports"][report["name"]] = {"submission_sha256": report["sha256"], "report_sha256": report_sha256}
