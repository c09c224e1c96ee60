"""The terminal of a verb that runs on Ray: the project's own lines, a live progress display of the
running jobs and trials, and nothing else.

Ray forwards everything its worker processes print to the driver. While a :class:`Console` is
open, the project's records among those lines (``logs.MARK``) are shown as the driver's own, and
every other line (Ray Train's and Tune's reports, raylet warnings, library warnings) goes to a log
file, as do the driver's own Ray and MLflow log lines. ``verbose`` shows those on the terminal too,
as Ray would. Errors are never hidden: a failed stage's cause reaches the driver as its exception.
"""

from __future__ import annotations

import io
import logging
import sys
import threading
from pathlib import Path

from rich.console import Console as RichConsole
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from .logs import NAME, decode, is_tick

# Ray has no public hook for the lines it prints: workers' lines go to one named handler of its
# dispatcher (ray._private.worker.connect), the cluster's warnings and errors to
# ``ray._private.worker.print_to_stdstream``; the console swaps both for its own while open.
RAY_PRINTER = "ray_print_logs"
LIBRARY_LOGGERS = ("ray", "mlflow")

log = logging.getLogger(NAME)


class Console:
    """A context manager: open it after ``ray.init`` or before (it hooks Ray when it connects).
    Without ``log_path`` Ray's own output stays on the terminal (as with ``verbose``)."""

    def __init__(self, log_path: Path | None, verbose: bool = False, live: bool | None = None):
        self.log_path = log_path
        self.verbose = verbose or log_path is None
        # the live display only on a terminal; captured output (CI, a test, a job's log) gets lines
        self.live = (sys.stdout.isatty() and not self.verbose) if live is None else live
        self._lock = threading.Lock()
        self._progress: Progress | None = None
        self._bars: dict[str, int] = {}
        self._ray_printer = None
        self._library_handlers: dict[str, tuple[list[logging.Handler], bool]] = {}

    def __enter__(self) -> Console:
        if self.log_path is None:
            self._file = io.StringIO()  # nowhere: the terminal has it all
        else:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.log_path, "a", encoding="utf-8", buffering=1)
        self._file_handler = logging.StreamHandler(self._file)
        self._file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        if not self.verbose:
            for name in LIBRARY_LOGGERS:
                logger = logging.getLogger(name)
                self._library_handlers[name] = (list(logger.handlers), logger.propagate)
                logger.handlers, logger.propagate = [self._file_handler], False
        if self.live:
            # transient: finished jobs have printed their "done" line; the display is for running ones
            self._progress = Progress(TextColumn("{task.description}"), BarColumn(bar_width=20), MofNCompleteColumn(),
                                      TimeElapsedColumn(), TextColumn("{task.fields[metrics]}"),
                                      console=RichConsole(file=sys.stdout), refresh_per_second=4, transient=True)
            self._progress.start()
        import ray._private.worker as ray_worker

        # the error listener calls this module function by name, so it is replaced while open
        self._ray_errors = ray_worker.print_to_stdstream
        ray_worker.print_to_stdstream = self._cluster_lines
        self.hook_ray()
        return self

    def hook_ray(self) -> None:
        """Take over the lines Ray forwards (idempotent; a no-op before Ray connects, or when it was
        started without ``log_to_driver``)."""
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

        printer = next((h for name, h in dispatcher.handlers if name == RAY_PRINTER), None)
        if printer is None or printer == self._worker_lines:
            return
        self._ray_printer = printer
        dispatcher.remove_handler(RAY_PRINTER)
        dispatcher.add_handler(RAY_PRINTER, self._worker_lines)

    def __exit__(self, *exc) -> None:
        import ray._private.worker as ray_worker
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

        if any(h == self._worker_lines for _, h in dispatcher.handlers):
            dispatcher.remove_handler(RAY_PRINTER)
            dispatcher.add_handler(RAY_PRINTER, self._ray_printer)
        ray_worker.print_to_stdstream = self._ray_errors
        if self._progress is not None:
            self._progress.stop()
        for name, (handlers, propagate) in self._library_handlers.items():
            logger = logging.getLogger(name)
            logger.handlers, logger.propagate = handlers, propagate
        self._file.close()

    def flush(self) -> None:
        self._file.flush()

    def _worker_lines(self, data: dict) -> None:
        """One batch of lines from one worker process (Ray's dispatcher thread)."""
        self._route(data, self._ray_printer)

    def _cluster_lines(self, data: dict, ignore_prefix: bool) -> None:
        """What Ray's error listener prints: raylet warnings, errors of tasks nobody waits on."""
        self._route(data, lambda batch: self._ray_errors(batch, ignore_prefix))

    def _route(self, data: dict, ray_printer) -> None:
        from ray._private.worker import filter_autoscaler_events

        source = data.get("actor_name") or data.get("task_name") or data.get("pid")
        lines = data.get("lines", [])
        if source == "autoscaler":  # its debug dump every few seconds: Ray too shows only the events
            lines = list(filter_autoscaler_events(lines))
        others = []
        for line in lines:
            record = decode(line)
            if record is None:
                others.append(line)
                with self._lock:
                    if not self._file.closed:  # Ray's listener thread may still hold this printer
                        self._file.write(f"({source} pid={data.get('pid')}) {line}\n")
            else:
                self._show(record)
        if self.verbose and others:
            ray_printer({**data, "lines": others})

    def _show(self, record: dict) -> None:
        progress = record.get("progress")
        if progress is not None and self._progress is not None:
            self._update_bar(progress)
            return
        if is_tick(progress):
            return
        log.log(record.get("level", logging.INFO), record.get("msg", ""))

    def _update_bar(self, progress: dict) -> None:
        with self._lock:
            tag = progress["tag"]
            if tag not in self._bars:
                self._bars[tag] = self._progress.add_task(tag, total=progress["steps"], metrics="")
            fields = {"metrics": progress["metrics"]} if progress.get("metrics") else {}
            self._progress.update(self._bars[tag], completed=progress["step"], **fields)

