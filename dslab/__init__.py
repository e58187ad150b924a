"""dslab: build the engineering behind DeepSeek-V3 and R1, one notebook at a time.

Data and imports flow one way, bottom to top:

- ground: ``configs`` (published and course configs), ``data`` (generators, tokenizer, batches, the pretraining
  corpus), ``nn`` (RMSNorm, SwiGLU, RoPE), ``validate`` (argument checks), ``plots`` and ``widgets`` (pure figures,
  smoothing, the widget wrapper), ``runtime`` (seeds, devices, progress bars, the torchrun join, timing),
  ``checkpoint`` (checkpoints and metrics logs, written and read one way), ``rewards`` (R1's rule-based rewards);
- components, one paper concept each and importable alone: ``accounting``, ``moe`` (with its engine ``dispatch``),
  ``mla`` (with the ``attention`` baselines), ``mtp``, ``fp8`` (formats, quantization, GEMM accumulation, training,
  memory, real FP8 GEMMs), ``sampling`` (decoding and rollouts);
- assembly: ``model`` (TinyDeepSeek from the components), ``systems`` and ``expert_parallel``;
- training: ``train`` (the loop every lab trains with, and the one learning-rate schedule), ``sft``, ``grpo``
  (R1's RL, re-exporting ``sampling``, ``evals`` and ``sft``), ``evals`` (pass@k, cons@k, greedy accuracy),
  ``capstone`` (the capstone's presets, runs and tiny R1);
- labs: ``dslab.labs.labNN_<slug>``, each lab's exercises, experiment harnesses, widgets and diagrams together, built
  only on the components' public API (see ``dslab.labs`` for the house rule);
- faces: ``bench`` (speed benchmarks), ``course`` (build, check, grade, doctor, run: tooling that knows no lab in
  particular) and ``__main__``.

No component imports lab code, the course tooling or a module above it. Only the few names a notebook needs on its
first line are re-exported here.
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
    from dslab.course.notebook import record as _record

    _record(**numbers)


def yours(fn, fallback):
    """The learner's ``fn``, falling back to ``fallback`` (with a note) while ``fn`` raises NotImplementedError."""
    from dslab.course.notebook import yours as _yours

    return _yours(fn, fallback)


def require(version: str) -> None:
    """Fail early, with the fix, when the installed dslab is older than the notebook needs."""
    from dslab.course.notebook import require as _require

    _require(version)


__all__ = ["__version__", "check", "is_headless", "pick_device", "progress", "record", "require", "seed_everything",
           "yours"]
