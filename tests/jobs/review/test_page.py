"""The review page in headless Chromium, as a moderator uses it: open the printed URL,
decide by click and by keyboard, undo, reload and see the decisions, filter; hostile
keys shown as text; without the token, nothing."""

from __future__ import annotations

import json
import os

import pytest

from jobs.report.summary import printable
from jobs.review import ReviewConfig
from jobs.review.decisions import read_decisions
from tests.jobs.review.browser import CHROMIUM, Browser
from tests.jobs.review.conftest import HOSTILE_KEYS, running

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (Debian package `chromium`; `make test` installs it as root)")

READY = "document.body && document.body.dataset.ready === '1'"
ROWS = "[...document.querySelectorAll('#rows tr.row')]"


def rows(b: Browser) -> list[dict]:
    return b.js(f"{ROWS}.map(tr => ({{id: +tr.dataset.id, uri: tr.querySelector('.uri').textContent, "
                "decision: tr.querySelector('td.decision').firstChild.textContent, "
                "current: tr.classList.contains('current')}))")


def test_decide_by_click_and_keyboard_undo_reload_filter(reports, tmp_path):
    with running(ReviewConfig(reports=reports, reviewer="chromium")) as app, Browser(tmp_path) as b:
        b.open(app.url)  # no token: refused, nothing shown
        b.wait("document.body && document.body.textContent.includes('token required')")
        b.open(f"{app.url}?token=wrong")
        b.wait("document.body && document.body.textContent.includes('wrong token')")

        b.open(f"{app.url}?token={app.token}")  # the printed URL
        b.wait(READY)
        assert b.js("location.href") == app.url  # the token left the address bar
        total = app.json("/api/meta")["counts"]["flagged"]
        first = app.json("/api/queue?limit=50")["rows"]
        shown = rows(b)
        assert [r["id"] for r in shown] == [r["id"] for r in first] and len(shown) == min(50, total)
        assert shown[0]["current"] and b.js("document.querySelector('#range').textContent") == f"1-50 of {total}"
        assert b.js("document.querySelectorAll('img.thumb').length") > 0
        b.wait("[...document.querySelectorAll('img.thumb')].slice(0, 3).every(i => i.complete && i.naturalWidth > 0)")

        a, c, d = shown[0]["id"], shown[1]["id"], shown[2]["id"]
        b.click(f'tr.row[data-id="{a}"] button[data-decision="generated"]')  # by click
        b.wait(f"{ROWS}[0].querySelector('td.decision').textContent.startsWith('generated')")
        assert rows(b)[1]["current"]  # moved on to the next image
        for key in ("k", "j", "r"):  # back, forward, real: the second image
            b.key(key)
        b.wait(f"{ROWS}[1].querySelector('td.decision').textContent.startsWith('real')")
        b.key("u")  # unsure: the third
        b.wait(f"{ROWS}[2].querySelector('td.decision').textContent.startsWith('unsure')")
        b.key("z")  # undo: the third is undecided again
        b.wait(f"{ROWS}[2].querySelector('td.decision').textContent.startsWith('undecided')")
        assert rows(b)[2]["current"]  # undo went back to the image it undid
        b.key("g")  # generated, by key this time
        b.wait(f"{ROWS}[2].querySelector('td.decision').textContent.startsWith('generated')")

        log = read_decisions(os.path.join(reports, "_decisions")).to_pandas().sort_values("decided_at")
        by_uri = {u: s for u, s in zip(app.session.queue.rows["uri"], app.session.queue.rows.index)}
        got = [(int(by_uri[u]), dec) for u, dec in zip(log["uri"], log["decision"])]
        assert got == [(a, "generated"), (c, "real"), (d, "unsure"), (d, "cleared"), (d, "generated")]
        assert set(log["reviewer"]) == {"chromium"}

        b.send("Page.reload", session=True)  # the decisions are still there
        b.wait(READY)
        decided = {r["id"]: r["decision"] for r in rows(b)}
        assert decided[a] == "generated" and decided[c] == "real (false positive)" and decided[d] == "generated"

        b.click("#undecided")  # filter: undecided only
        b.wait(f"!{ROWS}.some(tr => ['{a}', '{c}', '{d}'].includes(tr.dataset.id))")
        assert b.js("document.querySelector('#range').textContent").endswith(f"of {total - 3}")

        b.js("(() => { const p = document.querySelector('#prefix'); p.value = 's3://up/h/';"
             " p.dispatchEvent(new Event('change')); })()")
        b.wait(f"{ROWS}.length === {len(HOSTILE_KEYS)}")
        assert sorted(r["uri"] for r in rows(b)) == sorted(printable(k) for k in HOSTILE_KEYS)
        assert b.js("document.title") == "genscan review queue"  # no key ran as script
        assert b.js("document.querySelectorAll('script').length") == 1
        assert b.js("document.querySelectorAll('img:not(.thumb)').length") == 0
        html = b.js("document.documentElement.outerHTML")
        assert "\u202e" not in html and "\u200b" not in html and b.js("document.querySelectorAll('[onerror]').length") == 0
        assert json.dumps(app.json("/api/meta")["counts"]) == json.dumps(
            {"flagged": total, "generated": 2, "real": 1, "unsure": 0})
