"""`alexnet serve`: a local web app over a runs folder, for looking inside runs (live ones too).

    /                           Runs: every run, newest first, with its status (live by its lock)
    /runs/NAME                  a run: curves (redrawn as metrics.jsonl grows) above `alexnet report`'s
                                body (per-class accuracy, confusion, filters, activations, layer table)
    /runs/NAME/-/explore        a test image (by class, or the misclassified) or your own file ->
                                top-5 and each stage's strongest activation maps
    /compare?run=A&run=B        overlaid curves and `alexnet compare`'s table
    /api/...                    the JSON the pages use (and a script can call)

A run's own pages and endpoints sit after a ``/-/`` separator (as GitLab's do), so no run name can
collide with them: a run named ``grp/report`` is ``/api/runs/grp/report`` and its report
``/api/runs/grp/report/-/report``.

The package parts where its ideas part:

    folder.py   the runs folder: names, each run's files resolved inside it and read to a cap, records
    models.py   networks: the checkpoint cache, the worker threads, uploads decoded, top-5 and maps
    routes.py   the routes in small groups over a shared Server, the pages (Jinja2 templates/), errors
    app.py      create_app, what is refused before a route runs (Host, Origin, sizes, budgets), the
                connection's bounds under uvicorn, and the command

Pages are Jinja2 templates (autoescaped) with plain JavaScript and CSS from alexnet/static/, no build
step. Every network runs in one worker thread with torch at one intra-op thread (``--threads``):
requests queue rather than take the cores from a training run beside the server; a report renders
in a second worker, so an upload never waits behind a whole test-set evaluation.

Everything a request brings and every file of a run is data, whatever it holds. The server answers
only to the host names it was started for (DNS rebinding) and refuses a POST from another origin;
every file it reads is resolved (symlinks followed) and must be a regular file inside the runs
folder, opened without blocking and read up to a byte cap, off the event loop; one odd run is
listed as unreadable rather than breaking the listing of all of them.
"""

from .app import MAX_UPLOAD, add_parser, allowed_hosts, cmd_serve, create_app, uvicorn_config
from .folder import RunsFolder, run_record

__all__ = [
    "MAX_UPLOAD",
    "RunsFolder",
    "add_parser",
    "allowed_hosts",
    "cmd_serve",
    "create_app",
    "run_record",
    "uvicorn_config",
]
