"""The commands that read a study: `best` (its winner's layer table), `dashboard` (optuna-dashboard
on its storage, with its artifacts) and `report` (trials.csv and a self-contained report.html).
None of them imports torch."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from nas.cli.app import app, on_interrupt, say
from nas.cli.options import DEFAULT_STORAGE, Artifacts, Storage, StudyName, check_writable
from nas.errors import UsageError


@app.command(short_help="Print the best architecture of a study.")
def best(study_name: StudyName = "mnist", storage: Storage = DEFAULT_STORAGE) -> None:
    """Print the best architecture of a study (smallest one meeting the target) as a layer table."""
    from nas.arch.spec import arch_from_dict
    from nas.arch.summary import summary_table
    from nas.study import analytics
    from nas.study.storage import load_study

    study = load_study(study_name, storage)
    t = analytics.best_trial(study)
    say(analytics.summary(study, best_line=t is not None))
    if t is None:
        raise UsageError(
            f"study {study_name!r} has no trial that reaches its target of "
            f"{100 * analytics.study_settings(study).target_accuracy:.2f} % yet; "
            f"search longer (nas search --study-name {study_name})"
        )
    say(summary_table(arch_from_dict(json.loads(t.user_attrs["arch"]), f"trial {t.number}")))
    say(f"training: {json.dumps(t.user_attrs['train_config'])}")


@app.command(short_help="Serve optuna-dashboard on the study storage.")
def dashboard(
    study_name: Annotated[
        str | None,
        typer.Option(
            "--study-name",
            "--study",
            show_default="the storage's only study",
            help="The study whose page to print and open.",
        ),
    ] = None,
    storage: Storage = DEFAULT_STORAGE,
    host: Annotated[
        str, typer.Option(help="Interface to listen on: the loopback, or 0.0.0.0 for every interface.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port.")] = 8080,
    artifacts: Artifacts = None,
    open_browser: Annotated[
        bool, typer.Option("--open", help="Also open the study's page in a web browser on this machine.")
    ] = False,
) -> None:
    """Serve optuna-dashboard on the study storage, with its artifacts, and print the study's page."""
    import socket
    import threading
    import webbrowser

    import optuna
    import optuna_dashboard

    from nas.study import notes
    from nas.study import storage as st

    loc = st.parse(storage)
    backend = optuna.storages.get_storage(st.open_storage(loc, create=False))
    names = [s.study_name for s in backend.get_all_studies()]
    if study_name is None and len(names) == 1:
        study_name = names[0]
    if study_name is not None and study_name not in names:
        raise UsageError(
            f"{loc.shown} has no study {study_name!r} (it has: {', '.join(names) or 'none'}); "
            "check --study or --storage"
        )
    _port_is_free(host, port)
    shown = socket.gethostname() if host in ("0.0.0.0", "::", "") else host
    url = (
        notes.study_url(shown, port, backend.get_study_id_from_name(study_name))
        if study_name
        else f"http://{shown}:{port}/dashboard"
    )
    folder, store = notes.artifact_store_for(storage, artifacts)
    say(
        f"optuna-dashboard for {loc.shown}; artifacts: "
        + (str(folder) if folder else "none (give --artifacts DIR, the folder the workers upload to)")
    )
    say(f"study {study_name!r}: {url}" if study_name else f"studies {', '.join(names)}: {url}")
    say("Ctrl-C to stop")
    if open_browser:
        threading.Timer(1.0, webbrowser.open, [url]).start()
    on_interrupt(lambda: "dashboard stopped")
    # The server runs in a thread of its own and the main thread waits: a Ctrl-C is raised only in
    # the main thread, never inside a request, where wsgiref's handler caught it and served on.
    failed: list[BaseException] = []

    def serve() -> None:
        try:
            optuna_dashboard.run_server(backend, host=host, port=port, artifact_store=store)
        except BaseException as e:  # noqa: BLE001 - handed to the main thread
            failed.append(e)

    server = threading.Thread(target=serve, name="optuna-dashboard", daemon=True)
    server.start()
    while server.is_alive():
        server.join(0.5)
    try:
        if failed:
            raise failed[0]
    except OSError as e:  # taken between the check and now
        raise UsageError(
            f"--port {port}: cannot listen on {host}:{port} ({e.strerror or e}); choose another --port"
        ) from None


def _port_is_free(host: str, port: int) -> None:
    """Refuse a port another server holds before printing a URL that would not answer (the
    server itself reports it only after its "Listening on" line, as a traceback)."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as e:
        raise UsageError(
            f"--host {host}: not an address of this machine ({e.strerror or e}); "
            "give 127.0.0.1, or 0.0.0.0 for every interface"
        ) from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds: a port in TIME_WAIT is free
        try:
            probe.bind(address)
        except OSError as e:
            raise UsageError(
                f"--port {port}: cannot listen on {host}:{port} ({e.strerror or e}; another nas dashboard?); "
                "choose another --port"
            ) from None


@app.command(short_help="Write a study's trials.csv and report.html.")
def report(
    study_name: StudyName = "mnist",
    storage: Storage = DEFAULT_STORAGE,
    out: Annotated[
        Path,
        typer.Option(
            file_okay=False,
            help="Folder for trials.csv and report.html (made if missing; their earlier versions are replaced).",
        ),
    ] = Path("runs/report"),
) -> None:
    """Write trials.csv and a self-contained report.html (Pareto front, history, importances, curves)."""
    from nas.study import analytics
    from nas.study.report import rule_table, write_report
    from nas.study.storage import load_study

    study = load_study(study_name, storage)
    check_writable(out)
    paths = write_report(study, out)
    say(analytics.summary(study))
    replays = rule_table(study)
    if replays:
        say("convergence rules replayed on the trials that trained all their epochs:")
        for line in replays:
            say("  " + line)
    say("wrote " + ", ".join(str(p) for p in paths))
