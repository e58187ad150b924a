"""Course tooling, kept apart from the ML components: building student labs from solutions (``build``), instant
feedback (``check``), grading submissions outside the student's kernel (``grade``), the environment check
(``doctor``) and headless runs of the whole course (``run``). One module of exercises per lab lives in ``labs/``.
"""
