"""The grader's static scan (dslab.course.scan): each rule flags its hostile construct and leaves an honest
look-alike alone; the four tricks of issue 24 are flagged by name; the eight solutions are not flagged at all."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

from dslab.course.scan import RULES, Flag, python_source, scan

ROOT = Path(__file__).resolve().parents[1]


def _rules(*sources: str) -> list[str]:
    return [f.rule for f in scan(list(enumerate(sources)))]


# rule -> (hostile cells, honest look-alike cells): each hostile case is flagged under its rule, its look-alike not
CASES = {
    "grader code": [
        (["import dslab.course.answers as A"], ["import dslab\ndslab.check('00.mla_params', f)"]),
        (["from dslab.course import answers"], ["from dslab import accounting as acc\nacc.mla_params(cfg)"]),
        (["import dslab\nfn = dslab.course.answers.answer_all"], ["import dslab\nprint(dslab.__version__)"]),
        (["import dslab\nm = getattr(dslab, 'course')"], ["import dslab\nf = getattr(dslab, 'check')"]),
        (["import sys\nA = sys.modules['dslab.course.answers']"], ["print('see the course notes')"]),
        (["if '_dslab_grade_cell' in globals():\n    pass"], ["if 'model' in globals():\n    pass"]),
    ],
    "kernel hook": [
        (["ip = get_ipython()\nip.events.register('pre_run_cell', hook)"],
         ["get_ipython().run_line_magic('matplotlib', 'inline')"]),
        (["get_ipython().events.register('post_run_cell', hook)"], ["%matplotlib inline\nx = 1"]),
        (["import sys\nsys.settrace(tracer)"], ["import sys\nsys.setrecursionlimit(10_000)"]),
        (["import sys\nsys.setprofile(tracer)"], ["import sys\nprint(sys.version)"]),
        (["import threading\nthreading.settrace(tracer)"], ["import threading\nthreading.Thread(target=f).start()"]),
        (["import sys\nsys.addaudithook(hook)"], ["import sys\nsys.path.insert(0, '.')"]),
        (["get_ipython().input_transformers_cleanup.append(strip)"], ["from IPython.display import display"]),
        (["import sys\ncaller = sys._getframe(1).f_locals"], ["import inspect\nsig = inspect.signature(f)"]),
        (["import gc\nfound = gc.get_objects()"], ["import gc\ngc.collect()"]),
    ],
    "code object": [
        (["import types\nf = types.FunctionType(ref.__code__, globals())"],
         ["import types\nns = types.SimpleNamespace()"]),
        (["from types import FunctionType"], ["from functools import wraps"]),
        (["code = ref.__code__"], ["name = ref.__name__"]),
        (["c = code.replace(co_name='mla_params')"], ["s = text.replace('a', 'b')"]),
        (["c = getattr(ref, '__code__')"], ["d = getattr(ref, '__doc__')"]),
        (["import marshal"], ["import pickle"]),
    ],
    "module write": [
        (["import dslab.accounting as acc\nacc.mla_params = mine"],
         ["import dslab.accounting as acc\nn = acc.mla_params(c)"]),
        (["import dslab\ndslab.check = lambda *a: True"],
         ["import dslab\ncfg = dslab.configs.ModelArgs()\ncfg.dim = 8"]),
        (["from dslab.moe import Gate\nGate.forward = mine"],
         ["from dslab.moe import Gate\ng = Gate(cfg)\ng.bias = b"]),
        (["import dslab.accounting as acc\nsetattr(acc, 'mla_params', mine)"], ["setattr(model, 'dim', 8)"]),
        (["import dslab.labs.lab00_by_the_numbers.exercises as E\nE.EXERCISES[0].forbidden = ()"],
         ["import numpy as np\nnp.random.seed(0)"]),
        (["import sys\nsys.modules['json'] = fake"], ["import os\nos.environ['OMP_NUM_THREADS'] = '1'"]),
        (["import builtins\nbuiltins.print = mine"], ["import torch\ntorch.backends.cudnn.deterministic = True"]),
        (["import json\njson.loads = mine"], ["import matplotlib\nmatplotlib.rcParams['figure.dpi'] = 90"]),
        (["import dslab.configs as C\nC.PRESETS.clear()"], ["history = []\nhistory.append(1)"]),
        (["from unittest import mock\nmock.patch('dslab.moe.route', mine).start()"],
         ["import re\nr = re.compile('x+')"]),
    ],
    "dynamic code": [
        (["exec(source)"], ["exec('x = 1')"]),
        (["f = eval(text)"], ["model.eval()"]),
        (["c = compile(src, 'f', 'exec')"], ["import re\np = re.compile(pattern)"]),
        (["m = __import__(name)"], ["m = __import__('math')"]),
        (["import importlib\nm = importlib.import_module(name)"], ["import importlib\nimportlib.reload(mymodule)"]),
        (["%time exec(code)"], ["%time total = sum(range(10))"]),
    ],
}


@pytest.mark.parametrize("rule, hostile, honest", [(rule, h, o) for rule, pairs in CASES.items() for h, o in pairs],
                         ids=lambda v: v if isinstance(v, str) and v in RULES else None)
def test_each_rule_flags_its_construct_and_not_its_look_alike(rule, hostile, honest):
    assert rule in _rules(*hostile), (hostile, scan(list(enumerate(hostile))))
    assert _rules(*honest) == [], scan(list(enumerate(honest)))


def test_a_flag_names_the_cell_the_line_and_the_construct():
    flags = scan([(0, "import torch"), (4, "x = 1\n\nget_ipython().events.register('pre_run_cell', hook)")])
    assert flags == [Flag("kernel hook", 4, 3, "get_ipython().events.register", None)]
    assert str(flags[0]) == "kernel hook: cell 4 line 3: get_ipython().events.register"


def test_a_flag_inside_a_function_names_it():
    [flag] = scan([(2, "import types\ndef mla_params(args):\n    return types.FunctionType(ref.__code__, {})(args)")])
    assert flag.rule == "code object" and flag.function == "mla_params" and flag.line == 3


def test_aliases_carry_from_cell_to_cell():
    flags = scan([(0, "import dslab.course.answers as A"), (1, "x = 1"), (2, "B = A\nB.answer_all = mine")])
    assert [(f.rule, f.cell) for f in flags] == [("grader code", 0), ("module write", 2)]


def test_code_inside_literals_and_magics_is_scanned():
    assert "kernel hook" in _rules("exec(\"import sys\\nsys.settrace(t)\")")
    assert "kernel hook" in _rules("%%capture\nget_ipython().events.register('pre_run_cell', hook)")
    assert "dynamic code" in _rules("%timeit -n 3 -r 1 eval(code)")
    assert python_source("!ls\nx = 1").startswith("get_ipython().system")


HONEST = '''
import threading, time
import numpy as np
import torch
import matplotlib.pyplot as plt
from tqdm.auto import tqdm
from dslab import accounting as acc, configs

def _layer_params(cfg):
    """A helper of my own."""
    return acc.attention_params(cfg) + 3 * cfg.dim

done = threading.Event()
def _progress():
    while not done.wait(0.1):
        print(".", end="", flush=True)

spinner = threading.Thread(target=_progress, daemon=True)
spinner.start()
for step in tqdm(range(3)):
    x = torch.randn(4, 4) @ np.eye(4, dtype=np.float32).T.copy()
done.set()
spinner.join()
fig, ax = plt.subplots()
ax.plot(np.arange(3))
plt.show()
model = torch.nn.Linear(4, 4).eval()
cfg = configs.ModelArgs()
cfg.n_layers = 2
'''


def test_honest_learner_code_is_not_flagged():
    assert scan([(0, HONEST), (1, "%matplotlib inline\n!pip list | head -1\n%time y = sum(range(5))")]) == []


@pytest.mark.parametrize("path", sorted((ROOT / "solutions").glob("*.ipynb")), ids=lambda p: p.stem)
def test_no_solution_is_flagged(path):
    nb = nbformat.read(path, as_version=4)
    assert scan([(i, c.source) for i, c in enumerate(nb.cells) if c.cell_type == "code"]) == []


# The four tricks of issue 24, as a student wrote them, each flagged by its rule.
PATCHED_ANSWER_ALL = '''
import types
import dslab.course.answers as A
from dslab.course.exercises import find
_real = A.answer_all
def _answer_all(namespace, request, seconds, on_progress=None):
    for ex in request["exercises"]:
        ref = find(ex["id"]).reference
        namespace[ex["target"]] = types.FunctionType(ref.__code__.replace(co_name=ex["target"]), ref.__globals__)
        ex["forbidden"] = []
    return _real(namespace, request, seconds, on_progress)
A.answer_all = _answer_all
'''
EVENT_HOOK = '''
def _before(info):
    if "grade_cell" in info.raw_cell:
        globals()["mla_params"] = _clone
get_ipython().events.register("pre_run_cell", _before)
'''
THREAD = '''
import threading, time, sys
def _watch():
    while True:
        frame = sys._getframe(0)
        time.sleep(0.01)
threading.Thread(target=_watch, daemon=True).start()
'''
CLONED = '''
import types
from dslab import accounting as acc
mla_params = types.FunctionType(acc.mla_params.__code__.replace(co_name="mla_params"), acc.mla_params.__globals__)
'''


@pytest.mark.parametrize("source, rules", [
    (PATCHED_ANSWER_ALL, {"grader code", "code object", "module write"}),
    (EVENT_HOOK, {"kernel hook"}),
    (THREAD, {"kernel hook"}),
    (CLONED, {"code object"}),
], ids=["patched answer_all", "event hook", "thread", "cloned definitions"])
def test_the_four_tricks_are_flagged_by_name(source, rules):
    assert rules <= set(_rules(source)), scan([(0, source)])


def test_scan_validates_its_input():
    with pytest.raises(TypeError, match="cells"):
        scan(["import os"])
    with pytest.raises(TypeError, match="source"):
        python_source(None)
