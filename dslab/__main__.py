"""``python -m dslab COMMAND``: build, grade, doctor, run, coursemap, diagrams, html, data, train, sample, grpo
(``COMMAND --help``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _build(a) -> int:
    from dslab.course.build import BuildError, build_all, normalize_all

    try:
        if a.normalize:
            for p in normalize_all(a.solutions):
                print(f"normalized {p}")
        problems = build_all(a.solutions, a.labs, check=a.check)
    except BuildError as e:
        print(f"build failed: {e}", file=sys.stderr)
        return 1
    for p in problems:
        print(p, file=sys.stderr)
    if not problems:
        print("labs/ is in sync with solutions/" if a.check else f"wrote labs to {a.labs}/")
    return 1 if problems else 0


def _grade(a) -> int:
    from dslab.course.grade import GraderChanged, Limits, grade, print_table

    missing = [p for p in a.submissions if not p.exists()]
    if missing:
        print(f"no such file or folder: {', '.join(map(str, missing))}", file=sys.stderr)
        return 2
    try:
        limits = Limits(cell_seconds=a.cell_timeout, total_seconds=a.timeout, memory_mb=a.memory_mb,
                        call_seconds=a.call_timeout)
        reports = grade(a.submissions, a.out, lab=a.lab, seed=a.seed, grading_seed=a.grading_seed, jobs=a.jobs,
                        limits=limits, sandbox=a.sandbox, resume=a.resume, allow_delegation=a.allow_delegation,
                        gradescope=a.gradescope, strict=a.strict)
    except ValueError as e:
        print(e, file=sys.stderr)
        return 2
    except GraderChanged as e:
        print(f"grading stopped: {e}. Restore the package (e.g. `make setup`), then rerun with --resume.",
              file=sys.stderr)
        return 3
    print_table(reports)
    print(f"reports in {a.out}/: grades.csv, one JSON per submission, report.html and summary.png for the class"
          + (", gradescope/<name>/results.json" if a.gradescope else ""))
    return 0


def _doctor(a) -> int:
    from dslab.course.doctor import doctor

    return doctor()


def _run(a) -> int:
    from dslab.course.run import run

    return run(a.solutions, a.out, a.names, a.fast, a.update_solutions, a.record)


def _diagrams(a) -> int:
    from dslab.course.diagrams import update

    changed = update(a.solutions)
    for line in changed:
        print(f"redrew {line}")
    print(f"{len(changed)} redrawn; `make labs` carries them into labs/" if changed else "diagrams up to date")
    return 0


def _coursemap(a) -> int:
    from dslab.course.coursemap import update

    stale = update(a.solutions, a.readme, check=a.check)
    for line in stale:
        print(("stale: " if a.check else "updated: ") + line)
    if not stale:
        print("course map and notebook headers are up to date")
    elif not a.check:
        print("run `make labs` to carry the headers into labs/")
    return 1 if a.check and stale else 0


def _html(a) -> int:
    from dslab.course.html import export

    print(f"wrote {export(a.solutions, a.out)}")
    return 0


def _data(a) -> int:
    from dslab.data import freeze

    for path in freeze(a.out):
        print(f"wrote {path}")
    return 0


def _train(a) -> int:
    import torch

    from dslab import validate
    from dslab.capstone import preset_config, pretraining_run
    from dslab.checkpoint import CheckpointError
    from dslab.runtime import world
    from dslab.train import TrainingDiverged

    if a.threads:
        torch.set_num_threads(a.threads)
    try:
        cfg = preset_config(a.preset, **validate.settings(a.set))
        result = pretraining_run(cfg, a.out)
    except (CheckpointError, TrainingDiverged) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except (ValueError, TypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    s = result.summary
    if world()[0] == 0:
        print(f"{s['preset']}: {s['steps']} steps, {s['tokens']:,} tokens, final loss {s['final_loss']:.3f}, "
              f"val loss {s['final_val_loss']:.3f}, MaxVio {s['max_vio']}, MTP acceptance {s['mtp_acceptance']}; "
              f"{s['tokens_per_s']:,.0f} tokens/s, MFU {s['mfu']} (peak: {s['peak']}); wrote {a.out}/")
    return 0


def _sample(a) -> int:
    from dslab.capstone import load_run, sample
    from dslab.checkpoint import CheckpointError

    try:
        model, _ = load_run(a.run)
        res = sample(model, a.prompt.replace("\\n", "\n"), a.max_new_tokens, a.temperature, a.seed, a.speculative)
    except (CheckpointError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(a.prompt.replace("\\n", "\n") + res["text"])
    if a.speculative:
        print(f"[speculative decoding with the MTP head: acceptance {res['acceptance']:.2f}, "
              f"{res['tokens_per_forward']:.2f} tokens per main-model forward]", file=sys.stderr)
    return 0


def _grpo(a) -> int:
    import torch

    from dslab import validate
    from dslab.capstone import cold_start_config, grpo_config, grpo_run
    from dslab.checkpoint import CheckpointError

    if a.threads:
        torch.set_num_threads(a.threads)
    try:
        cfg = grpo_config(a.fast, **validate.settings(a.set))
        s = grpo_run(a.run, cfg, base=a.base, cold_start=cold_start_config(a.fast) if a.cold_start else None,
                     eval_tasks=a.eval_tasks, k=a.k, sample_tasks=a.sample_tasks)
    except (CheckpointError, ValueError, TypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    k = s["k"]
    for when, label in (("before", "base"), ("cold_start", "cold start"), ("after", "GRPO")):
        r = s[when]
        if r:
            print(f"{label:>10}: greedy {r['greedy']:.3f} on {r['tasks']} held-out test tasks; pass@1 "
                  f"{r['pass@1']:.3f}, cons@{k} {r[f'cons@{k}']:.3f}, format {r['format']:.3f} on {r['sampled_tasks']}")
    print(f"wrote {a.run}/grpo/")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dslab", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    _build_command(sub)
    _grade_command(sub)
    _course_commands(sub)
    _capstone_commands(sub)
    a = p.parse_args(argv)
    return a.func(a)


def _build_command(sub: argparse._SubParsersAction) -> None:
    b = sub.add_parser("build", help="generate labs/ from solutions/")
    b.add_argument("--check", action="store_true", help="exit 1 if labs/ differs from what the build produces")
    b.add_argument("--normalize", action="store_true", help="also rewrite solutions/ in normalized form")
    b.add_argument("--solutions", type=Path, default=Path("solutions"))
    b.add_argument("--labs", type=Path, default=Path("labs"))
    b.set_defaults(func=_build)


def _grade_command(sub: argparse._SubParsersAction) -> None:
    g = sub.add_parser("grade", help="grade submissions (files or folders) with hidden cases")
    g.add_argument("submissions", nargs="+", type=Path)
    g.add_argument("--out", type=Path, default=Path("build/grades"))
    g.add_argument("--lab", help="lab id such as 00 (default: read from the notebook)")
    g.add_argument("--seed", type=int, default=0, help="SEED injected into every submission")
    g.add_argument("--grading-seed", type=int, help="seed for the hidden cases (default: fresh each run)")
    g.add_argument("--jobs", type=int, default=1, help="submissions graded in parallel")
    g.add_argument("--cell-timeout", type=int, default=120, help="seconds per cell before it is interrupted")
    g.add_argument("--timeout", type=int, default=900, help="seconds per submission in total")
    g.add_argument("--memory-mb", type=int, default=4096,
                   help="MiB of data segment each submission's kernel may use (0: no cap, e.g. for CUDA)")
    g.add_argument("--call-timeout", type=float, default=20.0,
                   help="seconds per call of a learner's function on one hidden case")
    g.add_argument("--sandbox", choices=["auto", "bwrap", "none"], default="auto",
                   help="isolate each submission with bubblewrap (auto: when it works, else warn loudly)")
    g.add_argument("--resume", action="store_true",
                   help="continue a stopped batch: regrade only submissions whose report is not in OUT/manifest.json")
    g.add_argument("--gradescope", action="store_true",
                   help="also write OUT/gradescope/<name>/results.json in Gradescope's autograder format")
    g.add_argument("--allow-delegation", action="store_true",
                   help="score exercises that call their reference implementation (they are still flagged)")
    g.add_argument("--strict", action="store_true",
                   help="score 0 every exercise a kernel-hook flag touches (default: flags keep the score)")
    g.set_defaults(func=_grade)


def _course_commands(sub: argparse._SubParsersAction) -> None:
    """doctor, run, diagrams, coursemap, html, data: the environment, headless runs and what is generated from them."""
    d = sub.add_parser("doctor", help="check the environment")
    d.set_defaults(func=_doctor)

    r = sub.add_parser("run", help="execute solution notebooks headless, one line per lab")
    r.add_argument("names", nargs="*", help="notebook name prefixes (default: all)")
    r.add_argument("--fast", action=argparse.BooleanOptionalAction, default=None,
                   help="inject FAST (default: as saved in the notebook)")
    r.add_argument("--out", type=Path, default=Path("build/run"))
    r.add_argument("--solutions", type=Path, default=Path("solutions"))
    r.add_argument("--update-solutions", action="store_true", help="write executed notebooks back to solutions/")
    r.add_argument("--record", action="store_true",
                   help="keep each lab's time and key numbers in solutions/runs.json (for `python -m dslab coursemap`)")
    r.set_defaults(func=_run)

    dg = sub.add_parser("diagrams", help="redraw each lab's diagrams into its solution notebook's markdown")
    dg.add_argument("--solutions", type=Path, default=Path("solutions"))
    dg.set_defaults(func=_diagrams)

    cm = sub.add_parser("coursemap", help="write README's course map and each notebook's time from make run's records")
    cm.add_argument("--check", action="store_true", help="exit 1 if README or a header is stale")
    cm.add_argument("--solutions", type=Path, default=Path("solutions"))
    cm.add_argument("--readme", type=Path, default=Path("README.md"))
    cm.set_defaults(func=_coursemap)

    h = sub.add_parser("html", help="render the solved labs to static HTML with an index page (make html)")
    h.add_argument("--solutions", type=Path, default=Path("solutions"))
    h.add_argument("--out", type=Path, default=Path("build/html"))
    h.set_defaults(func=_html)

    dt = sub.add_parser("data", help="regenerate the frozen splits in datasets/")
    dt.add_argument("--out", type=Path, default=Path("datasets"))
    dt.set_defaults(func=_data)


def _capstone_commands(sub: argparse._SubParsersAction) -> None:
    """train, sample, grpo: the capstone's tiny DeepSeek-V3 and R1 from the command line."""
    tr = sub.add_parser("train", help="pretrain the capstone's tiny DeepSeek-V3 from a preset (resumes a run folder)")
    tr.add_argument("--preset", default="cpu", help="cpu, gpu-small or gpu-full (dslab.capstone.PRESETS)")
    tr.add_argument("--out", type=Path, required=True,
                    help="run folder, e.g. runs/NAME (resumed when it holds a checkpoint)")
    tr.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a setting: a TrainConfig field (steps=200), a run field (precision=fp8-emulated) or "
                         "model.<field> (model.dim=64); repeatable")
    tr.add_argument("--threads", type=int, help="torch threads per process (default: torch's choice)")
    tr.set_defaults(func=_train)

    sa = sub.add_parser("sample", help="continue a prompt with a trained run's model")
    sa.add_argument("run", type=Path, help="a run folder written by `python -m dslab train`")
    sa.add_argument("--prompt", required=True, help="text to continue (\\n for a newline)")
    sa.add_argument("--max-new-tokens", type=int, default=120)
    sa.add_argument("--temperature", type=float, default=0.0)
    sa.add_argument("--seed", type=int, default=0)
    sa.add_argument("--speculative", action="store_true", help="draft with the model's own MTP head")
    sa.set_defaults(func=_sample)

    gr = sub.add_parser("grpo", help="GRPO on a trained run's checkpoint: a tiny R1 (writes RUN/grpo/)")
    gr.add_argument("run", type=Path, help="a run folder written by `python -m dslab train`")
    gr.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a dslab.grpo.GRPOConfig field (steps=60, lr=1e-4, ...); repeatable")
    gr.add_argument("--base", type=Path, help="start from this weights file (e.g. datasets/capstone/r1_base.pt) "
                    "instead of RUN's checkpoint; RUN/grpo/ still holds the results")
    gr.add_argument("--cold-start", action="store_true", help="supervised cold start on worked examples first (R1)")
    gr.add_argument("--eval-tasks", type=int, default=100, help="held-out test tasks evaluated (greedy)")
    gr.add_argument("--sample-tasks", type=int, help="of those, how many get k samples (default: all)")
    gr.add_argument("-k", type=int, default=8, help="samples per task for pass@1 and cons@k")
    gr.add_argument("--fast", action="store_true", help="a few tiny steps (a smoke run)")
    gr.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    gr.set_defaults(func=_grpo)


if __name__ == "__main__":
    sys.exit(main())
