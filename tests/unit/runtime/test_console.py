"""The quiet console (orchestrator/runtime/console.py): the project's records that Ray forwards are shown as
the driver's own lines, everything else Ray prints goes to the log file, and --verbose shows both.

Lines reach the console the way Ray delivers them: through Ray's own dispatcher (the thread that
reads workers' output calls it) and its error listener's printer, with Ray's printer registered
under its own name as ``ray.init`` registers it."""

from __future__ import annotations

import contextlib
import io
import logging

import ray._private.worker as ray_worker
from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

from orchestrator.runtime.console import RAY_PRINTER, Console
from orchestrator.runtime.logs import MARK, configure, decode, progress, ticker


def forwarded(*calls) -> list[str]:
    """What a Ray worker prints for the project's log calls: marked records, one per line."""
    logger = logging.getLogger("orchestrator.worker_side")
    root = logging.getLogger("orchestrator")
    saved = list(root.handlers)
    root.handlers = []
    out, err = io.StringIO(), io.StringIO()
    try:
        configure(forwarded=True)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            for call in calls:
                call(logger)
    finally:
        root.handlers = saved
    return (out.getvalue() + err.getvalue()).splitlines()


def test_a_workers_lines_are_marked_records_ticks_included():
    lines = forwarded(lambda lg: lg.info("[source:x] training"),
                      lambda lg: progress(lg, "source:x", 5, 10, {"train_loss_avg": 0.5, "eval_accuracy": 0.75}),
                      lambda lg: ticker(lg, "source:x", 10)(3, 0.5),
                      lambda lg: lg.error("it broke"))
    assert all(line.startswith(MARK) for line in lines)
    records = [decode(line) for line in lines]
    assert records[0] == {"level": logging.INFO, "msg": "[source:x] training", "progress": None}
    assert records[1]["progress"] == {"tag": "source:x", "step": 5, "steps": 10, "metrics": "eval_accuracy=0.75"}
    assert records[2]["progress"]["metrics"] is None and records[2]["progress"]["step"] == 3
    assert records[3]["level"] == logging.ERROR
    assert decode("[source:x] training") is None and decode(MARK + "{not json") is None


def test_ticks_are_not_printed_as_lines():
    configure()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        ticker(logging.getLogger("orchestrator.stage"), "source:nli", 4)(2, 0.5)
    assert out.getvalue() == ""


@contextlib.contextmanager
def ray_printer():
    """Ray's printer as ``ray.init(log_to_driver=True)`` registers it, recording what it would print."""
    printed: list[dict] = []
    dispatcher.add_handler(RAY_PRINTER, printed.append)
    try:
        yield printed
    finally:
        dispatcher.remove_handler(RAY_PRINTER)


def batch(*lines: str, pid="4242", task_name="source_node") -> dict:
    return {"lines": list(lines), "pid": pid, "task_name": task_name, "is_err": False}


def test_ray_output_goes_to_the_file_and_the_projects_lines_to_the_terminal(tmp_path):
    configure()
    log_file = tmp_path / "logs" / "run.log"
    record = forwarded(lambda lg: progress(lg, "source:x", 6, 12, {"eval_accuracy": 0.5}),
                       lambda lg: ticker(lg, "source:x", 12)(1, 0.5))
    out, err = io.StringIO(), io.StringIO()
    with ray_printer() as printed, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        with Console(log_file, live=False):
            dispatcher.emit(batch("Checkpoint successfully created at: /x", *record))
            ray_worker.print_to_stdstream({"lines": ["WARNING: 8 PYTHON worker processes have been started"],
                                           "pid": "raylet", "is_err": False}, ignore_prefix=False)
            logging.getLogger("ray.tune").warning("a Tune warning in the driver")
        dispatcher.emit(batch("after the console closed"))
    assert out.getvalue() == "[source:x] step 6/12: eval_accuracy=0.5\n" and err.getvalue() == ""
    kept = log_file.read_text()
    assert "(source_node pid=4242) Checkpoint successfully created at: /x" in kept
    assert "(raylet pid=raylet) WARNING: 8 PYTHON worker processes" in kept
    assert "a Tune warning in the driver" in kept and MARK not in kept
    assert [b["lines"] for b in printed] == [["after the console closed"]]  # Ray's printer is back
    assert ray_worker.print_to_stdstream.__name__ == "print_to_stdstream"


def test_verbose_shows_rays_lines_too(tmp_path):
    configure()
    record = forwarded(lambda lg: lg.info("[distill] done"))
    out = io.StringIO()
    with ray_printer() as printed, contextlib.redirect_stdout(out):
        with Console(tmp_path / "run.log", verbose=True):
            dispatcher.emit(batch("Reporting training result 1", *record))
    assert out.getvalue() == "[distill] done\n"
    assert [b["lines"] for b in printed] == [["Reporting training result 1"]]
    assert "Reporting training result 1" in (tmp_path / "run.log").read_text()


def test_the_live_display_tracks_each_job(tmp_path):
    configure()
    records = forwarded(lambda lg: ticker(lg, "target:t:mpt:1", 20)(5, 0.5),
                        lambda lg: progress(lg, "target:t:mpt:1", 10, 20, {"eval_accuracy": 0.8}),
                        lambda lg: ticker(lg, "source:s", 40)(2, 0.5))
    with ray_printer(), contextlib.redirect_stdout(io.StringIO()):
        with Console(tmp_path / "run.log", live=True) as console:
            dispatcher.emit(batch(*records))
            tasks = {t.description: t for t in console._progress.tasks}
            assert (tasks["target:t:mpt:1"].completed, tasks["target:t:mpt:1"].total) == (10, 20)
            assert tasks["target:t:mpt:1"].fields["metrics"] == "eval_accuracy=0.8"
            assert (tasks["source:s"].completed, tasks["source:s"].total) == (2, 40)


def test_without_a_log_file_rays_lines_stay_with_ray():
    configure()
    record = forwarded(lambda lg: lg.info("[predict] replica ready"))
    out = io.StringIO()
    with ray_printer() as printed, contextlib.redirect_stdout(out):
        with Console(None):
            dispatcher.emit(batch("Running Dataset", *record))
    assert out.getvalue() == "[predict] replica ready\n"
    assert [b["lines"] for b in printed] == [["Running Dataset"]]
