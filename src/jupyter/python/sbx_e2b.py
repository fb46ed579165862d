"""IPython extension loaded into every sbx Python kernel (ipykernel --IPKernelApp.extra_extensions).

Adds the two display formats the E2B SDKs read from a result:

- ``e2b/chart``: the data of a matplotlib figure (type, title, axes labels, elements), made
  by E2B's own ``e2b_charts`` package when it is installed next to this file.
- ``e2b/data``: a pandas DataFrame as ``{column: [values...]}``.

Neither pandas nor matplotlib is imported here, so a kernel that never touches them does not
pay their import time. The formatters catch everything themselves: a failed extraction just
leaves the format out, it never prints a traceback into the user's output.

It also replaces ipykernel's watcher of fds 1 and 2 (see _redirect_fd_output).
"""

import codecs
import enum
import os
import sys
import threading
import warnings

from IPython.core.formatters import BaseFormatter
from traitlets import ObjectName, Unicode


class _E2BChartFormatter(BaseFormatter):
    format_type = Unicode("e2b/chart")
    print_method = ObjectName("_repr_e2b_chart_")
    _return_type = (dict,)

    def __call__(self, obj):
        # Not a type printer: matplotlib-inline removes Figure from every formatter's table
        # when pyplot selects its backend. Checked through sys.modules so that a kernel that
        # never imported matplotlib does not import it here.
        figure_module = sys.modules.get("matplotlib.figure")
        if figure_module is not None and isinstance(obj, figure_module.Figure):
            return _figure_to_chart(obj)
        return super().__call__(obj)


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
    formatters["e2b/chart"] = _E2BChartFormatter(parent=ip.display_formatter)
    data = _E2BDataFormatter(parent=ip.display_formatter)
    data.for_type_by_name("pandas.core.frame", "DataFrame", _dataframe_to_data)
    formatters["e2b/data"] = data
    try:
        _bound_stream_messages()
        _redirect_fd_output()
    except Exception:
        pass


def _watch_fd_replacing(stream, fd, read_end, original):
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    while True:
        try:
            data = os.read(read_end, 65536)
        except InterruptedError:
            continue
        except OSError:
            return
        if not data:
            return
        try:
            stream.write(decoder.decode(data))
        except Exception:
            pass
        try:
            os.write(original, data)
        except OSError:
            pass


def _redirect_fd_output():
    """Output written straight to fds 1 and 2 (C code, subprocesses) reaches the client
    through ipykernel's pipe watcher. The one in Debian 12's ipykernel 6.17 decodes strictly
    and dies at the first invalid UTF-8 byte, losing all later fd output of the kernel. This
    installs a fresh pipe on each fd with a watcher that decodes with U+FFFD replacement; the
    old watcher keeps waiting on a pipe nobody writes to any more."""
    for fd, stream in ((1, sys.stdout), (2, sys.stderr)):
        original = getattr(stream, "_original_stdstream_copy", None)
        if original is None or not hasattr(stream, "write"):
            continue
        read_end, write_end = os.pipe()
        os.dup2(write_end, fd)
        os.close(write_end)
        threading.Thread(
            target=_watch_fd_replacing,
            args=(stream, fd, read_end, original),
            name=f"sbx-fd{fd}-watcher",
            daemon=True,
        ).start()


_STREAM_FLUSH_CHARS = 1 << 20


def _bound_stream_messages():
    """ipykernel buffers stdout/stderr and publishes the buffer every 0.2 s: a fast print loop
    turns into one stream message of any size (100 MB printed in 0.1 s is one 100 MB message,
    held several times over by the kernel and by the agent that relays it). Flushing whenever
    the buffer passes 1 MiB keeps every message small, and since flush() waits for the IOPub
    thread, a flooding writer is slowed to the speed of the channel."""
    from ipykernel.iostream import OutStream

    if getattr(OutStream, "_sbx_bounded", False):
        return
    original_write = OutStream.write

    def write(self, string):
        n = original_write(self, string)
        try:
            buffer = self._buffer
            if buffer.tell() >= _STREAM_FLUSH_CHARS and self._is_master_process():
                thread = getattr(self.pub_thread, "thread", None)
                if thread is None or thread.ident != threading.get_ident():
                    self.flush()
        except Exception:
            pass
        return n

    OutStream.write = write
    OutStream._sbx_bounded = True
