"""The risk and DP report pages of a real run, opened in a real headless Chromium.

``flink-anonymizer run`` protects the sample in a MiniCluster; ``risk`` and ``dp-report``
write their pages from its output; Debian's Chromium, driven through its chromedriver by
selenium, renders them. A page fails the test on any console error, on any network
fetch, on a horizontal scroll bar at phone width, or when a headline figure differs from
what the command printed. Screenshots are kept under the test's tmp dir and
``tests/artifacts/``.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "conf/samples/customer-events.jsonl"
POLICY = ROOT / "conf/policies/customer-events.yaml"
CLI = [str(Path(sys.executable).with_name("flink-anonymizer"))]  # the console script, as a user runs it
RUN_TIMEOUT_S = 240  # one job on the 10,040-event sample, with room for a loaded machine
ARTIFACTS = ROOT / "tests/artifacts"
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
PHONE_WIDTH = 390


def run_cli(args: list[str], timeout: float = RUN_TIMEOUT_S) -> subprocess.CompletedProcess:
    """The CLI in its own process group; on timeout the group (its JVM too) is killed and the test fails."""
    proc = subprocess.Popen([*CLI, *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"flink-anonymizer {args[0]} did not end within {timeout:g} s:\n{err[-3000:]}")
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


@pytest.fixture(scope="module")
def run(tmp_path_factory, keyring_ref):
    """``flink-anonymizer run`` on the sample: (output folder, what it printed)."""
    out = tmp_path_factory.mktemp("run") / "out"
    result = run_cli(["run", "--policy", str(POLICY), "--input", str(SAMPLE), "--output", str(out),
                      "--keyring", keyring_ref])
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result.stdout


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Debian's Chromium, headless, through its own chromedriver: nothing downloaded."""
    for tool in (CHROMIUM, CHROMEDRIVER):
        if not Path(tool).exists():
            pytest.fail(f"{tool} is missing: apt-get install -y chromium chromium-driver (.ci/run does)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}", "--window-size=1000,900"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def open_page(driver, path: Path) -> dict[str, str]:
    """Load a page and return its summary figures (``data-figure`` -> text), failing on any console error or fetch."""
    driver.get_log("browser")  # drop what an earlier page left
    driver.set_window_size(1000, 900)
    driver.get(path.as_uri())
    errors = [entry for entry in driver.get_log("browser") if entry["level"] in ("SEVERE", "ERROR")]
    assert not errors, f"console errors on {path.name}: {errors}"
    assert driver.execute_script("return performance.getEntriesByType('resource').length") == 0, "the page fetched"
    return {el.get_attribute("data-figure"): el.text
            for el in driver.find_elements("css selector", "[data-figure]")}


def screenshots(driver, tmp_path: Path, name: str) -> list[Path]:
    """Whole-page screenshots at desktop and phone width, kept under tmp_path and tests/artifacts/."""
    ARTIFACTS.mkdir(exist_ok=True)
    kept = []
    for label, width in (("desktop", 1000), ("phone", PHONE_WIDTH)):
        driver.set_window_size(width, 900)
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(width, min(height + 160, 16000))
        if label == "phone":  # readable on a phone: no sideways scrolling
            assert driver.execute_script(
                "return document.documentElement.scrollWidth <= window.innerWidth"), "the page scrolls sideways"
        shot = tmp_path / f"{name}-{label}.png"
        assert driver.save_screenshot(str(shot))
        shutil.copy(shot, ARTIFACTS / shot.name)
        kept.append(shot)
    return kept


def printed(pattern: str, text: str) -> re.Match:
    match = re.search(pattern, text, re.MULTILINE)
    assert match, f"{pattern!r} not in what the command printed:\n{text}"
    return match


def test_risk_page_of_a_real_run_says_what_the_command_prints(run, browser, tmp_path):
    out, run_printed = run
    page, figures = tmp_path / "risk.html", tmp_path / "risk.json"
    result = run_cli(["risk", str(out / "anonymized"), "--policy", str(POLICY), "--view", "anonymized",
                      "--html", str(page), "--json-out", str(figures)], timeout=120)
    assert result.returncode == 0, result.stderr
    said = result.stdout
    shown = open_page(browser, page)

    k = printed(r"k achieved (\d+) \(required (\d+)\)", said)
    assert shown["k"] == f"{k[1]} of {k[2]} required"
    assert shown["verdict"].startswith(printed(r"^verdict: (PASS|FAIL|NO VERDICT)", said)[1])
    assert shown["unique"] == printed(r"^unique records (\S+)", said)[1]
    risk = printed(r"highest (\S+), mean (\S+), records above 0\.2: (\S+) \((\S+) records\)", said)
    assert (shown["risk_highest"], shown["risk_mean"], shown["at_risk"]) == (risk[1], risk[2], f"{risk[4]} ({risk[3]})")
    records = printed(r"^records (\d+) \(suppressed apart: (\d+)", said)
    assert shown["records"] == f"{int(records[1]):,}" and shown["suppressed"] == f"{int(records[2]):,}"
    for qi, value in re.findall(r"(\w+) (\d\.\d{3})", printed(r"^NCP by quasi-identifier: (.*)$", said)[1]):
        assert shown[f"ncp_{qi}" if qi != "mean" else "ncp_overall"] == value
    # and the command agrees with the job: every record it published, the ones it suppressed
    job = printed(r"anonymized\s+([\d,]+) records \(\+([\d,]+) suppressed\)", run_printed)
    assert (records[1], records[2]) == (job[1].replace(",", ""), job[2].replace(",", ""))

    body = browser.find_element("tag name", "body").text
    for chart in ("Class sizes", "Records by release level", "Prosecutor risk", "Information loss"):
        assert chart in body
    assert "k = 5 required" in browser.page_source  # the class-size chart marks k
    assert not browser.find_element("css selector", "details").get_attribute("open")  # raw figures folded away
    for shot in screenshots(browser, tmp_path, "risk-page"):
        assert shot.stat().st_size > 10_000


def test_dp_page_of_a_real_run_says_what_the_command_prints(run, browser, tmp_path):
    out, run_printed = run
    page = tmp_path / "dp.html"
    result = run_cli(["dp-report", str(out / "aggregated"), "--policy", str(POLICY), "--html", str(page)], timeout=120)
    assert result.returncode == 0, result.stderr
    said = result.stdout
    shown = open_page(browser, page)

    counts = printed(r"^releases (\d+) in (\d+) windows, (\d+) groups", said)
    assert (shown["releases"], shown["windows"], shown["groups"]) == (counts[1], counts[2], counts[3])
    assert shown["releases"] == printed(r"aggregated\s+([\d,]+) DP releases", run_printed)[1].replace(",", "")
    assert shown["epsilon_spent"] == printed(r"^epsilon spent (\S+) of", said)[1]
    assert shown["epsilon"] == printed(r"^epsilon per window (\S+),", said)[1]
    assert shown["unreleased"] == printed(r"^group-windows not released: (\d+)", said)[1]
    assert shown["verdict"].startswith(printed(r"^verdict: (PASS|FAIL|NO VERDICT)", said)[1])
    assert "Privacy budget" in browser.find_element("tag name", "body").text
    for shot in screenshots(browser, tmp_path, "dp-page"):
        assert shot.stat().st_size > 10_000
