"""IPython extension loaded into every sbx Python kernel (ipykernel --IPKernelApp.extra_extensions).

Adds the two display formats the E2B SDKs read from a result:

- ``e2b/chart``: the data of a matplotlib figure (type, title, axes labels, elements), made
  by E2B's own ``e2b_charts`` package when it is installed next to this file.
- ``e2b/data``: a pandas DataFrame as ``{column: [values...]}``.

Neither pandas nor matplotlib is imported here, so a kernel that never touches them does not
pay their import time. The formatters catch everything themselves: a failed extraction just
leaves the format out, it never prints a traceback into the user's output.

It also replaces ipykernel's watcher of fds 1 and 2 (see _redirect_fd_output) and takes
latency out of ipykernel's execute path (see _patch_out_stream and _trim_execute_path).

Run as a module (``python3 -m sbx_e2b -f <connection file> ...``) it is the kernel's launcher:
ipykernel_launcher without the debugger (see _launch).
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
        _patch_out_stream()
        _redirect_fd_output()
    except Exception:
        pass
    _trim_execute_path(getattr(ip, "kernel", None))


async def _no_control_flush():
    return None


def _trim_execute_path(kernel):
    """Two fixed costs of every request in ipykernel 6.17 that buy sbx nothing:

    - a 0.5 ms sleep before every execute_reply, so that stream output flushed just before
      it reaches clients first. sbx's agent ends an execution only at the kernel's idle
      status, which travels on IOPub after all of that output.
    - a wake-up of the control thread before every shell request (_flush_control_queue):
      it queues a marker future that nothing awaits (the coroutine returns the future
      instead of awaiting it), so it only costs a thread switch and the GIL. Control
      messages are still handled by the control thread as they arrive."""
    if kernel is None:
        return
    try:
        if hasattr(kernel, "_execute_sleep"):
            kernel._execute_sleep = 0.0
        import ipykernel

        # Checked against 6.x only (Debian 12 ships 6.17); later versions may await it.
        if ipykernel.version_info[0] == 6 and hasattr(kernel, "_flush_control_queue"):
            kernel._flush_control_queue = _no_control_flush
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


def _patch_out_stream():
    """Two changes to ipykernel's OutStream (sys.stdout and sys.stderr of the kernel):

    Bounded messages. ipykernel buffers stdout/stderr and publishes the buffer every 0.2 s: a
    fast print loop turns into one stream message of any size (100 MB printed in 0.1 s is one
    100 MB message, held several times over by the kernel and by the agent that relays it).
    Flushing whenever the buffer passes 1 MiB keeps every message small, and since flush()
    waits for the IOPub thread, a flooding writer is slowed to the speed of the channel.

    No empty flushes. Every execution flushes both streams three times (before the result,
    before the reply, before idle), and each flush is a round trip to the IOPub thread that
    waits for it to wake up and take the GIL: most of the kernel's latency for a cell that
    prints nothing. A flush is skipped when nothing was written since the last flush that
    completed; that flush already handed everything earlier to the IOPub thread, so the
    order of messages is unchanged."""
    from ipykernel.iostream import OutStream

    if getattr(OutStream, "_sbx_patched", False):
        return
    original_write = OutStream.write
    original_flush = OutStream.flush
    original__flush = OutStream._flush

    def write(self, string):
        lock = getattr(self, "_buffer_lock", None)
        if lock is not None:
            with lock:
                self._sbx_writes = getattr(self, "_sbx_writes", 0) + 1
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

    def flush(self):
        writes = getattr(self, "_sbx_writes", 0)
        try:
            # A _flush running in the IOPub thread (its 0.2 s timer) may have emptied the
            # buffer without having queued its message yet: then this one must not be
            # skipped either, so that what follows is queued after that message.
            clean = (
                getattr(self, "_sbx_flushed", None) == writes
                and not getattr(self, "_sbx_in_flush", 0)
                and self._is_master_process()
                and not self._buffer.tell()
            )
        except Exception:
            clean = False
        if clean:
            return
        original_flush(self)
        self._sbx_flushed = writes

    def _flush(self):
        self._sbx_in_flush = getattr(self, "_sbx_in_flush", 0) + 1
        try:
            original__flush(self)
        finally:
            self._sbx_in_flush -= 1

    OutStream.write = write
    OutStream.flush = flush
    OutStream._flush = _flush
    OutStream._sbx_patched = True


def _launch():
    """ipykernel_launcher, minus the import of debugpy (a sixth of the kernel's start time):
    ipykernel imports it at start for the Jupyter debugger, which sbx never drives. A None
    entry in sys.modules makes that import fail, so ipykernel runs without a debugger; the
    entry is removed once the kernel is set up, so user code can still import debugpy."""
    if sys.path and sys.path[0] == "":
        del sys.path[0]
    blocked = "debugpy" not in sys.modules
    if blocked:
        sys.modules["debugpy"] = None
    from ipykernel import kernelapp

    app = kernelapp.IPKernelApp.instance()
    app.initialize()
    if blocked and sys.modules.get("debugpy", 0) is None:
        del sys.modules["debugpy"]
    app.start()


if __name__ == "__main__":
    _launch()
