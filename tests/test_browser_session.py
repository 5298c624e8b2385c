"""Sessions and deep links in a real browser (issue 20, item 8): Debian's chromium driven by playwright against
``streamlit run app.py`` (the server fixture of tests/test_browser.py).

Logs in, reloads (still logged in, the cookie's attributes as documented), logs out and reloads (the login), then
opens ``/review?sample=BS-2`` logged out (the login, no "Page not found") and lands on Review with BS-2 after it.
"""

from __future__ import annotations

import re

import pytest

from tests.test_browser import ADMIN_PW, CHROMIUM, CHROMIUM_ARGS, UI_MS, server  # noqa: F401 - fixture

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_a_reload_keeps_the_login_and_a_deep_link_opens_after_login(server):
    from playwright.sync_api import expect, sync_playwright

    url, _ = server
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1400, "height": 1600})
        page = context.new_page()
        page.set_default_timeout(UI_MS)

        def idle() -> None:
            page.wait_for_timeout(300)
            page.locator('[data-testid="stStatusWidget"]').wait_for(state="hidden", timeout=UI_MS)

        def log_in() -> None:
            expect(page.get_by_role("button", name="Log in")).to_be_visible(timeout=UI_MS)
            page.get_by_label("Username", exact=True).fill("admin")
            page.get_by_label("Password", exact=True).fill(ADMIN_PW)
            page.get_by_role("button", name="Log in").click()

        picked = page.locator('[data-testid="stSidebar"]').get_by_role("combobox", name="Sample")

        def heading(title: str):
            return page.get_by_role("heading", name=title, exact=True).first

        page.goto(url)
        log_in()
        expect(heading("Samples")).to_be_visible(timeout=UI_MS)
        for sid in ("BS-1", "BS-2"):
            if not page.get_by_label("Sample id", exact=True).is_visible():
                page.get_by_text("New sample").first.click()
            page.get_by_label("Sample id", exact=True).fill(sid)
            page.get_by_role("button", name="Create sample").click()
            expect(page.get_by_text(f"Sample {sid} created")).to_be_visible(timeout=UI_MS)
            idle()
        page.wait_for_function("document.cookie.includes('leuko_session=')", timeout=UI_MS)

        # a reload keeps the login
        page.reload()
        expect(heading("Samples")).to_be_visible(timeout=UI_MS)
        expect(page.get_by_role("button", name="Log out")).to_be_visible(timeout=UI_MS)
        cookie = next(c for c in context.cookies() if c["name"] == "leuko_session")
        assert cookie["sameSite"] == "Strict" and cookie["path"] == "/" and cookie["expires"] > 0
        assert not cookie["secure"]  # served over http here; over https the script adds Secure

        # logout clears it: a reload shows the login
        page.get_by_role("button", name="Log out").click()
        expect(page.get_by_role("button", name="Log in")).to_be_visible(timeout=UI_MS)
        page.wait_for_function("!document.cookie.includes('leuko_session=')", timeout=UI_MS)
        page.reload()
        expect(page.get_by_role("button", name="Log in")).to_be_visible(timeout=UI_MS)
        assert not [c for c in context.cookies() if c["name"] == "leuko_session"]

        # a deep link while logged out: the login at that URL, then the page it names with its sample
        page.goto(f"{url}/review?sample=BS-2")
        log_in()
        expect(heading("Review")).to_be_visible(timeout=UI_MS)
        idle()
        assert page.get_by_text("Page not found").count() == 0
        expect(picked).to_have_value("BS-2")
        assert re.search(r"/review\?sample=BS-2$", page.url), page.url

        # and a reload of that URL keeps both
        page.reload()
        expect(heading("Review")).to_be_visible(timeout=UI_MS)
        expect(picked).to_have_value("BS-2")
        assert page.locator('[data-testid="stException"]').count() == 0
        browser.close()
