"""Each lab's own code, one package per lab: ``dslab/labs/labNN_<slug>/``.

The house rule, which every lab follows so that a newcomer finds everything of lab NN in one place:

- ``__init__.py`` names the notebook it serves (``NOTEBOOK = "NN_<slug>"``), says in its docstring what the lab
  teaches, and gives the course map its two cells: ``TEACHES`` (what the learner builds) and ``REPRODUCES`` (the
  paper numbers its checked cells print);
- ``exercises.py`` is the lab's exercise registry: ``EXERCISES``, a list of ``dslab.course.exercises.Exercise`` in the
  order the notebook uses them (target function, reference, public and hidden cases, points, hints for the known wrong
  answers, and the callables a submission may not delegate to);
- ``experiments.py`` holds the harnesses the notebook runs (training a tiny model several ways, sweeps, timing) and
  any helper longer than a few lines, so a notebook cell holds only what the learner should read (a screen at most);
- ``widgets.py`` holds the lab's explorers: pure functions ``fn(**values) -> (numbers, figure)`` and the controls
  that ``dslab.widgets.explore`` wraps around them;
- ``diagrams.py`` (where a lab has drawn diagrams) draws the pictures embedded in the notebook's markdown
  (``python -m dslab diagrams`` re-renders them);
- ``artifacts.py`` (where a lab ships runs or checkpoints in datasets/) is the script that made them, and
  ``shipped.py`` (lab 05) reads them back for the notebook.

Lab code is built only on the components' public API (``dslab.moe``, ``dslab.mla``, ...; names without a leading
underscore). Components never import lab code, and the course tooling (``dslab.course``) finds labs by this layout,
knowing nothing of any one lab.
"""
