"""Browser fixtures: a real headless Chromium (Debian's) driven by Playwright's sync API
against pytest-django's live server."""

import os
import shutil

import pytest

# Playwright's sync API keeps an event loop in this thread; Django would then refuse the
# test's own (synchronous) database access as "from an async context".
os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
]


@pytest.fixture(scope="session")
def browser():
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if not executable:
        pytest.skip("Chromium is not installed (no `chromium` on PATH); the browser tests need it.")
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        pytest.skip("Python Playwright is not installed; the browser tests need it.")

    # The first search loads the embedding model in the live server; be patient by default.
    expect.set_options(timeout=30_000)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, live_server):
    """A fresh browser tab whose relative URLs go to the live server. Console errors and
    failed page scripts fail the test."""
    context = browser.new_context(base_url=live_server.url, viewport={"width": 1280, "height": 900})
    context.set_default_timeout(30_000)
    tab = context.new_page()
    problems = []
    tab.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    tab.on(
        "console",
        lambda msg: (
            problems.append(f"console error: {msg.text}")
            if msg.type == "error" and "Failed to load resource" not in msg.text
            else None
        ),
    )
    yield tab
    context.close()
    assert not problems, "\n".join(problems)
