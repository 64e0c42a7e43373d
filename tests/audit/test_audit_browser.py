"""The report pages in a real headless browser: no console errors, and selecting a class shows its panel."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def browser(chromium: str):
    # No chromium or playwright: skipped here, a usage error under CI=true (tests/conftest.py).
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=chromium,
            args=[
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-dev-shm-usage",
                "--allow-file-access-from-files",
            ],
        )
        yield b
        b.close()


def _open(browser, path: Path):
    page = browser.new_page()
    errors: list[str] = []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(path.as_uri())
    page.wait_for_load_state("load")
    return page, errors


def test_index_page_class_selector(browser, shapes_report: Path) -> None:
    report = json.loads((shapes_report / "report.json").read_text())
    page, errors = _open(browser, shapes_report / "index.html")
    target = report["per_class"][3]
    page.select_option("#class-select", str(target["id"]))
    page.wait_for_function(
        "src => { const i = document.getElementById('class-panel'); return i.src.endsWith(src) && i.complete && i.naturalWidth > 0; }",
        arg=target["panel"],
    )
    stats = page.inner_text("#class-stats")
    assert target["name"] in stats and "accuracy" in stats
    page.click("#next")
    assert page.input_value("#class-select") == str(report["per_class"][4]["id"])
    assert page.locator("#recommendations li").count() == len(report["recommendations"])
    images_ok = page.evaluate(
        "Array.from(document.images).filter(i => i.src).every(i => i.complete && i.naturalWidth > 0)"
    )
    assert images_ok, "an image of the page did not load"
    assert errors == []


def test_accuracy_page_chart(browser, shapes_report: Path) -> None:
    report = json.loads((shapes_report / "report.json").read_text())
    page, errors = _open(browser, shapes_report / "per_class_accuracy_interactive.html")
    assert page.locator("rect.bar").count() == len(report["per_class"])
    page.select_option("#sort", "name")
    first = page.locator("#chart svg text").nth(5).text_content()
    assert first.endswith(sorted(r["name"] for r in report["per_class"])[0])
    page.hover("rect.bar >> nth=0")
    assert "accuracy" in page.inner_text("#tooltip")
    assert errors == []
