"""pandas DataFrames of the simulator's tables, for the Python API (``sim.api``).

pandas is an optional extra (``pip install 'ditsim[api]'``): it is imported here, inside the
function, only when a table is asked for, so ``import sim`` stays light and the planner runs
without it."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sim.errors import UserError


def data_frame(records: Iterable[Sequence[Any] | dict], columns: Sequence[str]) -> Any:
    """A ``pandas.DataFrame`` of ``records`` (tuples or dicts) with ``columns``, in order.
    Raises ``UserError`` saying how to install pandas when it is missing."""
    try:
        import pandas as pd
    except ImportError:
        raise UserError("to_frame() needs pandas: pip install 'ditsim[api]'") from None
    return pd.DataFrame.from_records(list(records), columns=list(columns))
