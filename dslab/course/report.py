"""The class report a grading run leaves for its instructor: ``grades.csv`` (one row per submission, one column per
exercise), the table printed at the end, ``summary.png`` and a self-contained ``report.html`` (score histogram, pass
rate per exercise, the most frequent failure per exercise, submissions that hit a limit, every flag grouped by
submission), and, behind ``--gradescope``, one Gradescope autograder ``results.json`` per submission. A flag (the
static scan's, the kernel's report, delegation, a lab mismatch, no sandbox) is shown wherever the score is.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import re
from collections import Counter
from pathlib import Path

from dslab import plots
from dslab.course.diagrams import render

LIMITS = ("timeout", "crashed", "kernel-died", "too-large")
LIMIT_WORDS = ("ran out of memory", "did not finish", "more output", "ended the kernel", "Timeout")


def csv_text(reports: list[dict]) -> str:
    """``grades.csv``: one row per submission, one column of points per exercise any submission was graded on."""
    ids = sorted({r["id"] for rep in reports for r in rep.get("exercises", [])})
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["name", "lab", "status", "score", "max_score", "seconds", *ids, "flags", "submission"])
    for rep in reports:
        pts = {r["id"]: r["points"] for r in rep.get("exercises", [])}
        w.writerow([rep["name"], rep.get("lab") or "", rep["status"], rep["score"], rep["max_score"], rep["seconds"],
                    *[pts.get(i, "") for i in ids], " | ".join(rep.get("flags", [])), rep["submission"]])
    return buf.getvalue()


def print_table(reports: list[dict]) -> None:
    """One line per submission on standard output: lab, status, score, seconds, its first problem or flag."""
    width = max([len(r["name"]) for r in reports] + [10])
    print(f"{'submission':<{width}}  lab  {'status':<14} {'score':>11}  seconds  first problem or flag")
    for r in reports:
        first = ((r.get("problems") or []) + (r.get("flags") or []) + [""])[0][:70]
        print(f"{r['name']:<{width}}  {r.get('lab') or '--':<3}  {r['status']:<14} "
              f"{r['score']:>5g} / {r['max_score']:<3g}  {r['seconds']:>7.1f}  {first}")


def summarize(reports: list[dict]) -> dict:
    """The numbers behind the class report: scores, pass rate and frequent failures per exercise, limits, flags."""
    graded = [r for r in reports if r.get("exercises")]
    exercises: dict[str, dict] = {}
    for r in graded:
        for e in r["exercises"]:
            row = exercises.setdefault(e["id"], {"id": e["id"], "number": e["number"], "max_points": e["max_points"],
                                                 "submissions": 0, "passed": 0, "failures": Counter()})
            row["submissions"] += 1
            if e["points"] >= e["max_points"]:
                row["passed"] += 1
            elif e["message"]:
                row["failures"][_generic(e["message"])] += 1
    for row in exercises.values():
        row["pass_rate"] = row["passed"] / row["submissions"] if row["submissions"] else 0.0
        row["top_failures"] = row.pop("failures").most_common(3)
    limited = [r["name"] for r in reports if r["status"] in LIMITS
               or any(w in p for p in r.get("problems", []) for w in LIMIT_WORDS)]
    return {
        "submissions": len(reports),
        "scores": [(r["name"], r["score"], r["max_score"], len(r.get("flags", []))) for r in reports],
        "exercises": sorted(exercises.values(), key=lambda row: row["number"]),
        "hit_limits": limited,
        "flagged": [(r["name"], f) for r in reports for f in r.get("flags", [])],
        "not_graded": [(r["name"], r["status"]) for r in reports if r["status"] != "graded"],
    }


def _generic(message: str) -> str:
    """A failure message without the case that showed it, so the same mistake on different cases counts once."""
    return re.sub(r"^case '[^']*': ", "", message)[:160]


FIGURE_HEIGHT = 3.4  # inches: the histogram's panel, and the least the figure gets
ROW_INCHES = 0.24  # one exercise's bar and its 10-point label, with room between labels
FRAME_INCHES = 1.2  # the bar chart's title, axis label and tick numbers


def figure_height(n_exercises: int) -> float:
    """Inches the summary figure needs so that each exercise's label has its own line: 43 exercises (all eight labs
    in one batch) need about 11.5."""
    return max(FIGURE_HEIGHT, FRAME_INCHES + ROW_INCHES * n_exercises)


def summary_figure(summary: dict):
    """Score histogram and pass rate per exercise, side by side; the figure grows with the exercises, the histogram
    keeps its shape at the top."""
    rows = summary["exercises"]
    fig, (ax1, ax2) = plots.figure(2, width=5.0, height=figure_height(len(rows)))
    fractions = [s / m for _, s, m, _ in summary["scores"] if m]
    ax1.hist(fractions, bins=[i / 10 for i in range(11)], color="C0", edgecolor="white")
    ax1.set(xlabel="score (share of the maximum)", ylabel="submissions", xlim=(0, 1),
            title=f"{summary['submissions']} submissions")
    ax1.set_box_aspect(FIGURE_HEIGHT / 5.0)
    ax1.set_anchor("N")
    ax2.barh([f"{r['number']} {r['id'].split('.', 1)[1]}" for r in rows][::-1],
             [100 * r["pass_rate"] for r in rows][::-1], color="C2")
    ax2.set(xlim=(0, 100), xlabel="submissions with full marks (%)", title="pass rate per exercise")
    return fig


def write(reports: list[dict], out: Path) -> tuple[Path, Path]:
    """Write ``out/summary.png`` and ``out/report.html``; returns their paths."""
    summary = summarize(reports)
    png = render(summary_figure(summary))
    (out / "summary.png").write_bytes(png)
    (out / "report.html").write_text(html_report(summary, png), encoding="utf-8")
    return out / "summary.png", out / "report.html"


def html_report(summary: dict, png: bytes) -> str:
    """One HTML file with the figure inlined: it opens anywhere, offline, and can be mailed."""
    e = html.escape
    rows = "".join(
        f"<tr><td>{e(r['number'])}</td><td>{e(r['id'])}</td><td>{100 * r['pass_rate']:.0f}%</td>"
        f"<td>{r['passed']} / {r['submissions']}</td><td>" +
        "<br>".join(f"{n}× {e(msg)}" for msg, n in r["top_failures"]) + "</td></tr>" for r in summary["exercises"])
    scores = "".join(f"<tr><td>{e(n)}</td><td>{s:g} / {m:g}</td><td>{f'{k} flag(s)' if k else ''}</td></tr>"
                     for n, s, m, k in summary["scores"])
    items = lambda pairs: "".join(f"<li>{e(a)}: {e(b)}</li>" for a, b in pairs) or "<li>none</li>"  # noqa: E731
    by_name: dict[str, list[str]] = {}
    for name, flag in summary["flagged"]:
        by_name.setdefault(name, []).append(flag)
    flagged = "".join(f"<li>{e(n)}<ul>{''.join(f'<li>{e(f)}</li>' for f in fs)}</ul></li>"
                      for n, fs in by_name.items()) or "<li>none</li>"
    limited = "".join(f"<li>{e(n)}</li>" for n in summary["hit_limits"]) or "<li>none</li>"
    figure = base64.b64encode(png).decode()
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>dslab grading report</title>
<style>body{{font-family:sans-serif;max-width:980px;margin:2em auto}}td,th{{padding:3px 10px;text-align:left;
vertical-align:top}}table{{border-collapse:collapse}}tr:nth-child(even){{background:#f3f3f3}}</style></head><body>
<h1>Grading report: {summary['submissions']} submissions</h1>
<img alt="score histogram and pass rate per exercise" src="data:image/png;base64,{figure}" style="width:100%">
<h2>Exercises: where the class struggled</h2>
<table><tr><th>#</th><th>exercise</th><th>full marks</th><th></th><th>most frequent failures</th></tr>{rows}</table>
<h2>Submissions that hit a limit</h2><ul>{limited}</ul>
<h2>Flags: where to look (scan and kernel report, delegation, lab mismatch, no sandbox)</h2><ul>{flagged}</ul>
<h2>Not graded normally</h2><ul>{items(summary['not_graded'])}</ul>
<h2>Scores</h2><table>{scores}</table>
</body></html>
"""


def gradescope_results(report: dict) -> dict:
    """One submission's report in the shape of Gradescope's autograder ``results.json`` (one test per exercise)."""
    tests = [{"name": f"Exercise {e['number']} ({e['id']})", "number": e["number"], "score": e["points"],
              "max_score": e["max_points"], "status": "passed" if e["points"] >= e["max_points"] else "failed",
              "output": e["message"], "visibility": "visible"} for e in report.get("exercises", [])]
    notes = "; ".join(report.get("problems", []) + report.get("flags", []))
    return {"score": report["score"], "execution_time": round(report.get("seconds", 0)),
            "output": f"status: {report['status']}" + (f"; {notes}" if notes else ""), "visibility": "visible",
            "stdout_visibility": "hidden", "tests": tests}


def write_gradescope(reports: list[dict], out: Path) -> list[Path]:
    """``out/gradescope/<name>/results.json`` for each submission (a Gradescope autograder copies one into
    /autograder/results/)."""
    paths = []
    for r in reports:
        path = out / "gradescope" / r["name"] / "results.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(gradescope_results(r), indent=1) + "\n", encoding="utf-8")
        paths.append(path)
    return paths
