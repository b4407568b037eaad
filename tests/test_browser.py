"""What a person sees, in a real browser: report.html and optuna-dashboard's pages of a tiny study,
in headless Chromium (Debian's chromium and chromium-driver, driven by selenium). Where they are
missing the tests are skipped, saying which package to install; CI (.ci/run) installs them and
sets NAS_REQUIRE_SYSTEM_DEPS=1, under which a missing browser fails."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import ROOT, make_study, needs_system
from optuna.trial import TrialState

from nas.study import notes
from nas.study.report import write_report

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,1600",
)

# Per figure on the page: how many traces it has and how many of their SVG paths have a shape.
FIGURES_JS = """
return [...document.querySelectorAll('.js-plotly-plot')].map(d => ({
  title: (d.querySelector('.gtitle') || {}).textContent || '',
  traces: d.querySelectorAll('g.trace').length,
  paths: [...d.querySelectorAll('g.trace path')].filter(p => (p.getAttribute('d') || '').length > 4).length,
}));
"""


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.fail("selenium is missing: pip install -e '.[dev]'", pytrace=False)
    needs_system("the browser tests", "chromium chromium-driver", Path(CHROMIUM).is_file() and Path(DRIVER).is_file())
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=opts, service=Service(DRIVER))
    yield driver
    driver.quit()


def wait_for(driver, check, what: str, timeout: float = 30):
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.2).until(lambda d: check(d))
    except Exception:  # noqa: BLE001 - selenium's TimeoutException, said as what was awaited
        text = driver.execute_script("return document.body.innerText")
        pytest.fail(f"{what} within {timeout} s; the page says: {text[:600]!r}")


def js_errors(driver) -> list[str]:
    """Uncaught exceptions and console errors since the last call."""
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def text(driver) -> str:
    return driver.execute_script("return document.body.innerText")


def test_report_draws_every_figure(browser, tmp_path):
    study = make_study(name="tiny")
    (tmp_path / "model").mkdir()
    notes.record_export(
        study, {"trial": 0, "test_acc": 0.9871, "epochs": 4, "train_images": 60000, "seeds": [{}]}, tmp_path / "model"
    )
    _, page = write_report(study, tmp_path / "report")
    browser.get(page.as_uri())
    expected = page.read_text().count('class="plotly-graph-div"')
    figures = wait_for(
        browser,
        lambda d: (f := d.execute_script(FIGURES_JS)) and len(f) == expected and all(x["paths"] for x in f) and f,
        f"{expected} figures with drawn traces",
    )
    assert expected == 4 and all(f["traces"] >= 1 and f["paths"] >= 1 for f in figures), figures
    assert [f["title"] for f in figures][:2] == [
        "Validation accuracy vs parameters (hover for the architecture)",
        "Learning curves, coloured by outcome",
    ]
    seen = text(browser)
    for fact in (
        "nas study: tiny",
        "seed_9274",
        "trial 0: 98.71 % test accuracy",
        "failed as stale by another worker",
        "judged from",
        "wrongly pruned",
    ):
        assert fact in seen, fact
    # Hovering the seed's star shows its architecture in one line.
    hover = browser.execute_script("""
        const gd = document.querySelectorAll('.js-plotly-plot')[0];
        const seed = gd.data.findIndex(t => t.name === 'seed network');
        Plotly.Fx.hover(gd, [{curveNumber: seed, pointNumber: 0}]);
        return gd.querySelector('.hoverlayer').textContent;""")
    assert "trial 0" in hover and "c4 c4 c8 max c12 c12 c16 max c20v" in hover, hover
    assert js_errors(browser) == []


@pytest.fixture
def dashboard(tmp_path):
    """A tiny study with notes and an architecture artifact, served by `nas dashboard`: (printed study URL, study)."""
    storage = f"sqlite:///{tmp_path}/studies/nas.sqlite3"
    (tmp_path / "studies").mkdir()
    study = make_study(storage, name="tiny", n=12)
    store = notes.open_artifact_store(tmp_path / "studies" / "artifacts")  # the default folder the dashboard must find
    running = study.ask()  # a trial that uploads its architecture while it runs, as the search does
    for key in ("arch", "train_config", "params"):
        running.set_user_attr(key, study.trials[0].user_attrs[key])
    notes.upload_arch(study, running, store)
    study.tell(running, state=TrialState.FAIL)
    notes.upload_arch(study, study.trials[0], store)  # a finished trial's file goes to the study
    for t in study.trials:
        notes.save_trial_note(study, t)
    notes.save_study_note(study)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "nas", "dashboard", "--storage", storage, "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        printed = [proc.stdout.readline() for _ in range(3)]
        url = next((line.split(": ", 1)[1].strip() for line in printed if line.startswith("study 'tiny': ")), None)
        assert url == f"http://127.0.0.1:{port}/dashboard/studies/{study._study_id}", printed
        assert f"artifacts: {tmp_path}/studies/artifacts" in printed[0], printed
        for _ in range(150):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=2).close()
                break
            except OSError:
                time.sleep(0.2)
        else:
            pytest.fail("the dashboard did not answer")
        yield url, study, running.number
    finally:
        proc.terminate()
        proc.wait(10)


def test_dashboard_shows_notes_plots_and_artifacts(browser, dashboard):
    url, study, uploaded = dashboard
    browser.get(url)
    figures = wait_for(
        browser,
        lambda d: (f := d.execute_script(FIGURES_JS)) and any(x["paths"] for x in f) and f,
        "the study page's plots",
    )
    assert any(f["paths"] for f in figures)
    wait_for(
        browser, lambda d: "Study Artifacts" in text(d) and "trial_0.toml" in text(d), "the study's artifacts listed"
    )

    browser.get(url + "/trials?numbers=0")
    wait_for(browser, lambda d: "Why it ended" in text(d), "the seed trial's note")
    seen = text(browser)
    for fact in (
        "Trial 0: converged",
        "complete and converged: 98.50 % validation accuracy",
        "Total params: 9,274",
        "seed_9274",
        "Validation accuracy per epoch",
    ):
        assert fact in seen, fact

    stale = next(t for t in study.trials if t.user_attrs.get("fail_reason", "").startswith("stale"))
    browser.get(url + f"/trials?numbers={stale.number}")
    wait_for(browser, lambda d: "failed as stale by another worker" in text(d), "the stale trial's reason")

    browser.get(url + f"/trials?numbers={uploaded}")
    wait_for(browser, lambda d: f"trial_{uploaded}.toml" in text(d), "the running trial's architecture artifact")

    browser.get(url + "/note")
    wait_for(browser, lambda d: "The smallest fully convolutional network reaching" in text(d), "the study note")
    assert "Pareto front" in text(browser)
    assert [e for e in js_errors(browser) if "favicon" not in e] == []


def test_dashboard_bad_input_is_one_line_and_leaves_nothing(tmp_path):
    missing = tmp_path / "none.sqlite3"
    storage = f"sqlite:///{tmp_path}/s.db"
    make_study(storage, name="tiny", n=1)
    for args, message in (
        ([f"sqlite:///{missing}"], "no study storage there yet"),
        ([storage, "--study", "nope"], "has no study 'nope' (it has: tiny)"),
    ):
        r = subprocess.run(
            [sys.executable, "-m", "nas", "dashboard", "--storage", *args], capture_output=True, text=True, timeout=60
        )
        assert r.returncode == 2 and message in r.stderr and len(r.stderr.splitlines()) == 1, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.db"]  # no database, no artifact folder created
