"""The Python API: what the commands answer, as objects, for notebooks and scripts.

``predict``, ``plan`` and ``compare`` take the flags of ``sim.predict``, ``sim.plan`` and
``sim.compare`` as keyword arguments (``--per-family 2`` is ``per_family=2``,
``--no-vae`` is ``vae=False``) and go through the same parser, defaults and checks: bad input
raises ``UserError`` with the message the command prints after ``error:``. They return a
``Prediction``, a ``Plan`` and a ``Comparison``; ``Plan.to_frame()``,
``Comparison.to_frame()`` and ``Prediction.trace.to_frame()`` give pandas DataFrames (pandas
is imported only then: ``pip install 'ditsim[api]'``). Seconds, bytes and GB as in the JSON
output. The package exports the same names: ``sim.predict(...)``, ``sim.plan(...)``,
``sim.compare(...)``.

>>> import sim
>>> p = sim.predict(model="pixart", gpus=2, steps=4, patches=2)
>>> p.config.label(), p.oom
('pipefusion2(M=2,W=1)', False)
>>> try:
...     sim.predict(model="pixart", gpus=3, ulysses=2)
... except sim.UserError as e:
...     print(e)
parallel degrees multiply to 2 but --gpus is 3; the product of the degrees must equal the GPU count

A longer, runnable walk through: ``docs/api_example.py``.
"""

from __future__ import annotations

from sim.compare import Comparison
from sim.compare import api_compare as compare
from sim.errors import UserError
from sim.evaluate import Prediction
from sim.plan import Plan
from sim.plan import api_plan as plan
from sim.predict import api_predict as predict
from sim.search import Candidate
from sim.trace import Trace

__all__ = ["Candidate", "Comparison", "Plan", "Prediction", "Trace", "UserError", "compare",
           "plan", "predict"]
