"""IPython extension loaded into every sbx Python kernel (ipykernel --IPKernelApp.extra_extensions).

Adds the two display formats the E2B SDKs read from a result:

- ``e2b/chart``: the data of a matplotlib figure (type, title, axes labels, elements), made
  by E2B's own ``e2b_charts`` package when it is installed next to this file.
- ``e2b/data``: a pandas DataFrame as ``{column: [values...]}``.

Neither pandas nor matplotlib is imported here: the formatters are registered by type name,
so a kernel that never touches them does not pay their import time. Failures inside a
formatter never reach user code: IPython drops a format whose formatter raised, and these
catch everything themselves so that no traceback is printed either.
"""

import enum
import warnings

from IPython.core.formatters import BaseFormatter
from traitlets import ObjectName, Unicode


class _E2BChartFormatter(BaseFormatter):
    format_type = Unicode("e2b/chart")
    print_method = ObjectName("_repr_e2b_chart_")
    _return_type = (dict,)


class _E2BDataFormatter(BaseFormatter):
    format_type = Unicode("e2b/data")
    print_method = ObjectName("_repr_e2b_data_")
    _return_type = (dict,)


def _figure_to_chart(figure):
    try:
        from e2b_charts import chart_figure_to_dict
    except Exception:
        return None
    _add_get_suptitle(type(figure))
    try:
        # pydantic warns about numpy tick values; that is not the user's business.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            chart = chart_figure_to_dict(figure)
    except Exception:
        return None
    return _plain(chart) or None


def _add_get_suptitle(figure_class):
    """e2b-charts calls Figure.get_suptitle (matplotlib >= 3.8); Debian 12 ships 3.6."""
    if hasattr(figure_class, "get_suptitle"):
        return

    def get_suptitle(self):
        text = getattr(self, "_suptitle", None)
        return text.get_text() if text is not None else ""

    figure_class.get_suptitle = get_suptitle


def _plain(value):
    """JSON-safe copy: enums become their values, numpy scalars and arrays Python numbers and
    lists."""
    if isinstance(value, enum.Enum):
        return _plain(value.value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        if isinstance(value, float) and value != value:
            return None
        return value
    if hasattr(value, "tolist"):
        return _plain(value.tolist())
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if hasattr(value, "item"):
        return _plain(value.item())
    return str(value)


def _dataframe_to_data(df):
    try:
        return _plain(df.to_dict(orient="list"))
    except Exception:
        return None


def load_ipython_extension(ip):
    formatters = ip.display_formatter.formatters
    chart = _E2BChartFormatter(parent=ip.display_formatter)
    chart.for_type_by_name("matplotlib.figure", "Figure", _figure_to_chart)
    formatters["e2b/chart"] = chart
    data = _E2BDataFormatter(parent=ip.display_formatter)
    data.for_type_by_name("pandas.core.frame", "DataFrame", _dataframe_to_data)
    formatters["e2b/data"] = data
