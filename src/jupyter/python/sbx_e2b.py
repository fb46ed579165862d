"""IPython extension loaded into every sbx Python kernel (ipykernel --IPKernelApp.extra_extensions).

Adds the two display formats the E2B SDKs read from a result:

- ``e2b/chart``: the data of a matplotlib figure (type, title, axes labels, elements), made
  by E2B's own ``e2b_charts`` package when it is installed next to this file.
- ``e2b/data``: a pandas DataFrame as ``{column: [values...]}``.

Neither pandas nor matplotlib is imported here, so a kernel that never touches them does not
pay their import time. The formatters catch everything themselves: a failed extraction just
leaves the format out, it never prints a traceback into the user's output.

Pillow images show as E2B's start-up script makes them: ``image.show()`` and
``image.save("path")`` display the image as a PNG result (see _patch_pillow), and no external
viewer is started. Pillow is patched when the user's code imports it, not before.

It also replaces ipykernel's watcher of fds 1 and 2 (see _redirect_fd_output) and takes
latency out of ipykernel's execute path (see _patch_out_stream, _trim_execute_path,
_fast_plain_format, _quiet_debug_log, _cache_accepts_cell_id, _fast_parse_date and
_direct_iopub): none of them changes a message the kernel sends.

Run as a module (``python3 -m sbx_e2b -f <connection file> ...``) it is the kernel's launcher:
ipykernel_launcher without the debugger (see _launch).
"""

import codecs
import enum
import functools
import importlib.machinery
import os
import select
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


class _PatchOnImport:
    """A meta path finder that lets a module be imported as usual and then calls a function on
    it, so that patching a module costs nothing until the user's code imports it."""

    def __init__(self, patches):
        self.patches = patches  # module name -> function(module)

    def find_spec(self, name, path, target=None):
        patch = self.patches.get(name)
        if patch is None:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path, target)
        if spec is None or not hasattr(spec.loader, "exec_module"):
            return None
        exec_module = spec.loader.exec_module

        def exec_and_patch(module):
            exec_module(module)
            try:
                patch(module)
            except Exception:
                pass  # the module stays as its authors made it

        spec.loader.exec_module = exec_and_patch
        return spec


def _display(obj):
    from IPython.display import display

    display(obj)


def _patch_pil_image(image_module):
    """Image.save to a path (a str, as in E2B's start-up script) displays the image first."""
    save = image_module.Image.save

    @functools.wraps(save)
    def save_and_display(self, fp, format=None, **params):
        if isinstance(fp, str):
            _display(self)
        return save(self, fp, format, **params)

    image_module.Image.save = save_and_display


def _patch_pil_imageshow(imageshow_module):
    """Image.show displays the image as a PNG result, before any external viewer (xdg-open and
    the like, which have no display here and would print their errors into later cells)."""

    class DisplayViewer(imageshow_module.Viewer):
        format = "PNG"  # Viewer.show first converts modes that PNG cannot hold

        def show_image(self, image, **options):
            _display(image)
            return 1

    imageshow_module.register(DisplayViewer, order=-1)


_PILLOW_PATCHES = {"PIL.Image": _patch_pil_image, "PIL.ImageShow": _patch_pil_imageshow}


def _patch_pillow():
    for name, patch in _PILLOW_PATCHES.items():
        if name in sys.modules:
            patch(sys.modules[name])
    sys.meta_path.insert(0, _PatchOnImport(
        {n: p for n, p in _PILLOW_PATCHES.items() if n not in sys.modules}))


def load_ipython_extension(ip):
    formatters = ip.display_formatter.formatters
    formatters["e2b/chart"] = _E2BChartFormatter(parent=ip.display_formatter)
    data = _E2BDataFormatter(parent=ip.display_formatter)
    data.for_type_by_name("pandas.core.frame", "DataFrame", _dataframe_to_data)
    formatters["e2b/data"] = data
    try:
        _patch_out_stream()
        _redirect_fd_output()
        ip.events.register("post_execute", _drain_fd_output)
    except Exception:
        pass
    try:
        _patch_pillow()
    except Exception:
        pass
    kernel = getattr(ip, "kernel", None)
    _trim_execute_path(kernel)
    for speed_up in (
        lambda: _fast_plain_format(ip.display_formatter),
        lambda: _quiet_debug_log(kernel),
        _cache_accepts_cell_id,
        _fast_parse_date,
        lambda: _direct_iopub(kernel),
    ):
        try:
            speed_up()
        except Exception:
            pass


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


# Exact types with no _repr_*_ method of their own: what every formatter but text/plain does
# with one depends only on what was registered for it (checked in _plain_only).
_PLAIN_TYPES = frozenset(
    (int, float, complex, bool, str, bytes, type(None), list, tuple, dict, set, frozenset)
)


def _fast_plain_format(display_formatter):
    """IPython computes every result through ~14 formatters (each call wrapped in a decorator
    that rebuilds the call's signature): a quarter of a millisecond for ``1+1``. For an object
    of an exact builtin type all of them but text/plain return None, unless a printer was
    registered for that type (or that very object) or a formatter is not one whose behaviour is
    known here; in those cases, and whenever include or exclude is given, the full path runs.
    Otherwise only text/plain is computed, by the same formatter, so the data and metadata are
    exactly those of the full path."""
    from IPython.core import formatters as f

    known = {
        f.HTMLFormatter, f.MarkdownFormatter, f.SVGFormatter, f.PNGFormatter, f.JPEGFormatter,
        f.PDFFormatter, f.LatexFormatter, f.JSONFormatter, f.JavascriptFormatter,
        f.IPythonDisplayFormatter, f.MimeBundleFormatter, _E2BChartFormatter, _E2BDataFormatter,
    }
    full = display_formatter.format

    def plain_only(obj):
        """The text/plain formatter if it is the only one that can produce anything for obj."""
        mro = type(obj).__mro__
        keys = [(cls.__module__, cls.__name__) for cls in mro]
        oid = id(obj)
        plain = None
        others = [display_formatter.ipython_display_formatter,
                  display_formatter.mimebundle_formatter]
        for mime, formatter in display_formatter.formatters.items():
            if mime == "text/plain":
                plain = formatter
            else:
                others.append(formatter)
        for formatter in others:
            if type(formatter) not in known:
                return None
            if not formatter.enabled:
                continue
            if oid in formatter.singleton_printers:
                return None
            types = formatter.type_printers
            deferred = formatter.deferred_printers
            for cls, key in zip(mro, keys):
                if cls in types or key in deferred:
                    return None
        return plain

    def format(obj, include=None, exclude=None):
        if type(obj) in _PLAIN_TYPES and include is None and exclude is None:
            plain = plain_only(obj)
            if plain is not None:
                format_dict, md_dict = {}, {}
                data = plain(obj)
                md = None
                if isinstance(data, tuple) and len(data) == 2:
                    data, md = data
                if data is not None:
                    format_dict["text/plain"] = data
                if md is not None:
                    md_dict["text/plain"] = md
                return format_dict, md_dict
        return full(obj, include, exclude)

    display_formatter.format = format


def _quiet_debug_log(kernel):
    """traitlets leaves the application's logger at DEBUG and filters in its handler (WARNING
    unless --log-level says otherwise): every request makes four debug records (one formats
    the whole message) that the handler then drops. Raising the logger's level to the lowest
    of its handlers' drops nothing that would have been printed. A later change of log_level
    reconfigures logging (the logger goes back to DEBUG)."""
    log = getattr(kernel, "log", None)
    if log is None or log.propagate or not log.handlers:
        return
    lowest = min(h.level for h in log.handlers)
    if lowest > log.level:
        log.setLevel(lowest)


def _cache_accepts_cell_id():
    """ipykernel asks inspect.signature whether do_execute and run_cell_async take a cell_id,
    three times per execution (~30 us each); the answer is fixed for a function."""
    from ipykernel import ipkernel, kernelbase

    original = kernelbase._accepts_cell_id
    cache = {}

    def accepts_cell_id(meth):
        key = (getattr(meth, "__func__", meth), hasattr(meth, "__self__"))
        try:
            return cache[key]
        except KeyError:
            pass
        except TypeError:
            return original(meth)
        answer = original(meth)
        if len(cache) < 64:
            cache[key] = answer
        return answer

    kernelbase._accepts_cell_id = accepts_cell_id
    if getattr(ipkernel, "_accepts_cell_id", None) is original:
        ipkernel._accepts_cell_id = accepts_cell_id


def _fast_parse_date():
    """jupyter_client parses the date of every incoming header with dateutil (~85 us). The
    agent's dates are UTC with a Z ("2024-01-02T03:04:05.678Z"): those are parsed here to the
    same datetime, with a tzinfo of the class dateutil picks for Z in this local zone (learnt
    from dateutil on the first date, again when the zone changes). Zones with DST, and every
    other form, go through dateutil."""
    import re
    import time
    from datetime import datetime

    from dateutil import tz
    from jupyter_client import jsonutil

    original = jsonutil.parse_date
    pattern = re.compile(r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d{1,6}))?Z\Z")
    learnt = {}  # local zone -> tzinfo class dateutil gives a Z date

    def parse_date(s):
        m = pattern.match(s) if type(s) is str else None
        if m is None or time.daylight:
            return original(s)
        zone = (time.tzname, time.timezone)
        cls = learnt.get(zone)
        if cls is None:
            dt = original(s)
            if type(dt) is datetime and type(dt.tzinfo) in (tz.tzutc, tz.tzlocal):
                learnt[zone] = type(dt.tzinfo)
            return dt
        y, mo, d, h, mi, sec, frac = m.groups()
        try:
            return datetime(int(y), int(mo), int(d), int(h), int(mi), int(sec),
                            int(frac.ljust(6, "0")) if frac else 0, cls())
        except ValueError:
            return original(s)

    jsonutil.parse_date = parse_date


def _direct_iopub(kernel):
    """ipykernel sends every IOPub message from its IOPub thread: the sender queues it and
    wakes the thread through a zmq pipe, and the thread then waits for the GIL. For the status
    idle that ends a request this is pure latency. Here a message sent from any other thread
    goes straight out when nothing is queued for the IOPub thread; otherwise it is queued
    behind what is there as before. Every queued event runs holding the same lock as a direct
    send, and counts as queued until it has run, so messages keep their order, and the socket
    is only ever used by one thread at a time (the lock is the memory barrier zmq asks for
    when a socket changes threads). Forked children (no IOPub thread of their own) and the
    IOPub thread itself send as before."""
    pub = getattr(kernel, "iopub_thread", None)
    if pub is None or not all(
        hasattr(pub, a)
        for a in ("schedule", "send_multipart", "_really_send", "_is_master_process", "thread")
    ):
        return
    lock = threading.RLock()
    pending = [0]
    ready = [False]
    schedule = pub.schedule
    send_multipart = pub.send_multipart

    def scheduled(f):
        def run():
            with lock:
                try:
                    f()
                finally:
                    pending[0] -= 1

        with lock:
            pending[0] += 1
        schedule(run)

    def direct_send_multipart(*args, **kwargs):
        thread = pub.thread
        if thread.ident != threading.get_ident() and pub._is_master_process():
            with lock:
                if ready[0] and not pending[0] and thread.is_alive():
                    pub._really_send(*args, **kwargs)
                    return
        send_multipart(*args, **kwargs)

    pub.schedule = scheduled
    pub.send_multipart = direct_send_multipart
    # Events queued before this point are not counted: direct sends start once they have run.
    scheduled(lambda: ready.__setitem__(0, True))


class _FdPipe:
    """One redirected fd (1 or 2): a pipe whose read end a watcher thread forwards to the
    kernel's stream, decoding with U+FFFD replacement. Reads happen under a lock, so that
    drain() (run at the end of every cell) and the thread never reorder output."""

    def __init__(self, stream, read_end, original):
        os.set_blocking(read_end, False)
        self.stream = stream
        self.read_end = read_end
        self.original = original
        self.lock = threading.Lock()
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def _pump(self):
        """Forwards what the pipe holds now; False once it is closed."""
        while True:
            try:
                data = os.read(self.read_end, 65536)
            except BlockingIOError:
                return True
            except InterruptedError:
                continue
            except OSError:
                return False
            if not data:
                return False
            try:
                self.stream.write(self.decoder.decode(data))
            except Exception:
                pass
            try:
                os.write(self.original, data)
            except OSError:
                pass

    def drain(self):
        with self.lock:
            self._pump()

    def watch(self):
        # ipykernel >= 6.30 attributes a thread's output to the cell that was running when
        # the thread started: for this thread, none (it starts with the kernel), and output
        # of no cell is dropped. Unlisted, it writes under the running cell, as drain() does.
        for name in ("_thread_to_parent_header", "_thread_to_parent"):
            getattr(self.stream, name, {}).pop(threading.get_ident(), None)
        while True:
            try:
                select.select([self.read_end], [], [])
            except InterruptedError:
                continue
            except OSError:
                return
            with self.lock:
                if not self._pump():
                    return


_FD_PIPES = []


def _drain_fd_output(*_args):
    """Output a cell wrote straight to fds 1 and 2 is in the pipes when the cell ends: forward
    it now, so it belongs to that cell rather than to whichever cell runs when the watcher
    thread next gets the GIL."""
    for pipe in _FD_PIPES:
        pipe.drain()


def _redirect_fd_output():
    """Output written straight to fds 1 and 2 (C code, subprocesses) reaches the client
    through ipykernel's pipe watcher, which has two faults: nothing makes the end of a cell
    wait for it, so what a cell wrote last can arrive after its reply (and the client drops
    it) or with the next cell; and it decodes each read on its own, so a character split
    between two reads becomes U+FFFD (6.17, Debian 12's, even dies at the first invalid
    UTF-8 byte, losing all later fd output). This installs a fresh pipe on each fd with a
    watcher that decodes incrementally with U+FFFD replacement and that the end of every cell
    drains (_drain_fd_output); the old watcher keeps waiting on a pipe nobody writes to."""
    for fd, stream in ((1, sys.stdout), (2, sys.stderr)):
        original = getattr(stream, "_original_stdstream_copy", None)
        if original is None or not hasattr(stream, "write"):
            continue
        read_end, write_end = os.pipe()
        os.dup2(write_end, fd)
        os.close(write_end)
        pipe = _FdPipe(stream, read_end, original)
        _FD_PIPES.append(pipe)
        threading.Thread(target=pipe.watch, name=f"sbx-fd{fd}-watcher", daemon=True).start()


_STREAM_FLUSH_CHARS = 1 << 20


def _pending_chars(stream):
    """Characters an OutStream holds: one buffer up to ipykernel 6.29, one per parent message
    from 6.30 on (a dict that the IOPub thread replaces whole when it flushes)."""
    buffers = getattr(stream, "_buffers", None)
    if buffers is not None:
        return sum(b.tell() for b in list(buffers.values()))
    return stream._buffer.tell()


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
            if _pending_chars(self) >= _STREAM_FLUSH_CHARS and self._is_master_process():
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
                and not _pending_chars(self)
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
    entry is removed once the kernel is set up, so user code can still import debugpy.

    IPython's input history is kept in memory (In, Out, _i<n>, %history, %rerun of this
    kernel's inputs all work) instead of ~/.ipython/profile_default/history.sqlite: writing
    it wakes a saving thread after every execution that competes with the reply for the GIL
    (0.4 to 0.9 ms of a warm run). What is lost is history of earlier kernels (%history -g,
    ~1/ ranges), and the file is not written. A --HistoryManager.hist_file given on the
    command line still wins."""
    if sys.path and sys.path[0] == "":
        del sys.path[0]
    blocked = "debugpy" not in sys.modules
    if blocked:
        sys.modules["debugpy"] = None
    from ipykernel import kernelapp

    app = kernelapp.IPKernelApp.instance()
    app.initialize(["--HistoryManager.hist_file=:memory:"] + sys.argv[1:])
    if blocked and sys.modules.get("debugpy", 0) is None:
        del sys.modules["debugpy"]
    app.start()


if __name__ == "__main__":
    _launch()
