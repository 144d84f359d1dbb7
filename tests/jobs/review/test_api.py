"""The review app over real HTTP: the token, decisions that persist, latest wins, undo,
bad requests, concurrent writers, hostile keys, paging a large queue."""

from __future__ import annotations

import json
import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import date

import pandas as pd
import pytest

from jobs.report import ReportConfig
from jobs.report import run as run_report
from jobs.report.store import open_reports
from jobs.review import ReviewConfig, main, prepare, server
from jobs.review.decisions import decision_files, latest, read_decisions
from jobs.review.queue import Queue, QueueFilter
from tests.helpers import publish_synthetic
from tests.jobs.review.conftest import HOSTILE_KEYS, running


def flagged_rows(reports: str) -> pd.DataFrame:
    """The flagged rows, independently of the app: pandas over the published reports."""
    df = open_reports(reports).to_table(columns=["scan_id", "uri", "etag", "score", "flagged"]).to_pandas()
    return df[df["flagged"].eq(True)].sort_values("score", ascending=False)


def test_nothing_is_readable_or_writable_without_the_token(reports):
    with running(ReviewConfig(reports=reports)) as app:
        routes = [("/", "GET"), ("/api/meta", "GET"), ("/api/queue", "GET"), ("/api/thumbnail/0", "GET"),
                  ("/static/review.js", "GET"), ("/api/decisions", "POST")]
        body = {"reviewer": "eve", "items": [{"id": 0, "decision": "real"}]}
        for token in (None, "", "wrong", app.token[:-1], app.token + "x"):
            for path, method in routes:
                status, headers, text = app.call(path, method=method, token=token,
                                                 body=body if method == "POST" else None)
                assert status == 401, (path, token, status)
                assert b"s3://" not in text and "Content-Security-Policy" in headers
            assert app.call(f"/?token={token}", token=None)[0] == 401
            cookie = {"Cookie": f"genscan_review_x={token}"}
            assert app.call("/api/meta", token=None, headers=cookie)[0] == 401
        assert not os.path.exists(os.path.join(reports, "_decisions"))  # nothing was written

        status, headers, _ = app.call(f"/?token={app.token}", token=None)  # the printed URL
        assert status == 303 and headers["location"] == "/"  # the token leaves the address bar
        cookie = headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and app.token in cookie
        jar = {"Cookie": cookie.split(";")[0]}
        assert app.call("/api/meta", token=None, headers=jar)[0] == 200
        status, _, page = app.call("/", token=None, headers=jar)
        assert status == 200 and b"<script src=\"/static/review.js\"" in page
        assert app.call("/api/meta", headers={"Host": "evil.example"})[0] == 400  # DNS rebinding


def test_no_token_serves_everyone_and_says_so(reports, capsys):
    with running(ReviewConfig(reports=reports, no_token=True)) as app:
        assert app.json("/api/meta", token=None)["counts"]["flagged"] == len(flagged_rows(reports))
    assert "--no-token" in capsys.readouterr().err


def test_decisions_persist_latest_wins_and_undo(reports):
    want = flagged_rows(reports)
    with running(ReviewConfig(reports=reports, reviewer="ana")) as app:
        page = app.json("/api/queue?limit=5")
        assert page["total"] == len(want)
        assert [r["score"] for r in page["rows"]] == pytest.approx(want["score"].head(5).tolist(), abs=1e-4)
        first, second = page["rows"][0]["id"], page["rows"][1]["id"]
        app.decide([(first, "generated"), (second, "real")])
        answer = app.decide([(first, "real")], reviewer="bo")  # a second opinion: the latest counts
        assert answer["rows"][0]["decision"] == "real" and answer["rows"][0]["reviewer"] == "bo"
        app.decide([(second, "cleared")])  # undo
    with running(ReviewConfig(reports=reports)) as app:  # a new session reads them back
        rows = {r["id"]: r for r in app.json("/api/queue?limit=5")["rows"]}
        assert rows[first]["decision"] == "real" and rows[first]["reviewer"] == "bo"
        assert rows[second]["decision"] is None
        assert app.json("/api/queue?undecided=1")["total"] == len(want) - 1
    log = read_decisions(os.path.join(reports, "_decisions"))
    assert log.num_rows == 4 and len(decision_files(os.path.join(reports, "_decisions"))) == 3  # append-only
    top = want.iloc[0]
    mine = log.to_pandas().query("uri == @top.uri")
    assert set(mine["decision"]) == {"generated", "real"} and set(mine["etag"]) == {top.etag}
    assert set(mine["scan_id"]) == {top.scan_id} and mine["score"].iloc[0] == pytest.approx(top.score)
    assert mine["decided_at"].dt.tz is not None and mine["model_version"].str.startswith("sha256-").all()


def test_bad_decisions_are_refused_and_nothing_is_written(reports):
    with running(ReviewConfig(reports=reports)) as app:
        n = app.json("/api/meta")["counts"]["flagged"]
        bad = [{"reviewer": "ana", "items": [{"id": 0, "decision": "fake"}]},
               {"reviewer": "ana", "items": [{"id": n, "decision": "real"}]},
               {"reviewer": "ana", "items": [{"id": True, "decision": "real"}]},
               {"reviewer": "", "items": [{"id": 0, "decision": "real"}]},
               {"reviewer": "a\u202eb", "items": [{"id": 0, "decision": "real"}]},
               {"reviewer": "ana", "items": []}, [1, 2], b"{not json"]
        for body in bad:
            status, _, text = app.call("/api/decisions", method="POST", body=body)
            assert status == 400, (body, status, text)
        form = app.call("/api/decisions", method="POST", body=b"reviewer=a&id=0",
                        headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert form[0] == 415
        assert app.call("/api/decisions")[0] == 405  # only POST decides
        assert app.call("/api/queue?limit=100000")[0] == 400 and app.call("/api/queue?scan_date=May")[0] == 400
    assert not os.path.exists(os.path.join(reports, "_decisions"))


def test_two_moderators_at_once_lose_nothing(reports):
    with running(ReviewConfig(reports=reports)) as one, running(ReviewConfig(reports=reports)) as two:
        ids = [r["id"] for r in one.json("/api/queue?limit=40")["rows"]]
        jobs = [(app, name, i) for i in ids for app, name in ((one, "ana"), (two, "bo"))]
        with ThreadPoolExecutor(8) as pool:  # both apps, several requests in flight each
            list(pool.map(lambda j: j[0].decide([(j[2], "generated" if j[1] == "ana" else "real")], j[1]), jobs))
        # each app sees the other's decisions too (after its refresh interval)
        time.sleep(2.1)
        assert one.json("/api/queue?undecided=1&limit=200")["total"] == len(flagged_rows(reports)) - len(ids)
    log = read_decisions(os.path.join(reports, "_decisions")).to_pandas()
    assert len(log) == 2 * len(ids) and len(decision_files(os.path.join(reports, "_decisions"))) == 2 * len(ids)
    assert sorted(log.groupby("reviewer").size().tolist()) == [len(ids), len(ids)]
    current = latest(pa_table := read_decisions(os.path.join(reports, "_decisions")))
    assert len(current) == len(ids) and pa_table.num_rows == 2 * len(ids)
    last = log.sort_values("decided_at").drop_duplicates(["uri"], keep="last").set_index("uri")["decision"]
    assert current.set_index("uri")["decision"].to_dict() == last.to_dict()


def test_hostile_keys_are_sent_escaped(reports):
    with running(ReviewConfig(reports=reports, scan_id=("scan-2",))) as app:
        _, headers, raw = app.call("/api/queue?limit=200&prefix=s3://up/h/")
        rows = json.loads(raw)["rows"]
        shown = {r["uri"] for r in rows}
        assert len(rows) == len(HOSTILE_KEYS)
        assert "s3://up/h/invoice\\u202egpj.exe" in shown and "s3://up/h/zero\\u200bwidth.jpg" in shown
        assert "\u202e" not in raw.decode() and "\u200b" not in raw.decode()  # the characters themselves never travel
        assert headers["Content-Type"] == "application/json"
        assert "script-src 'self'" in headers["Content-Security-Policy"]
        assert "unsafe-inline" not in headers["Content-Security-Policy"]


def test_report_shows_the_queue_precision(reports):
    with running(ReviewConfig(reports=reports)) as app:
        rows = app.json("/api/queue?scan_id=scan-1&limit=10")["rows"]
        app.decide([(rows[0]["id"], "generated"), (rows[1]["id"], "generated"), (rows[2]["id"], "real"),
                    (rows[3]["id"], "unsure"), (rows[4]["id"], "generated"), (rows[4]["id"], "cleared")])
    result = run_report(ReportConfig(input=reports))
    review = {r.scan_id: r for r in result.reviews}
    flagged = flagged_rows(reports)
    assert review["scan-1"].flagged == (flagged.scan_id == "scan-1").sum()
    assert (review["scan-1"].reviewed, review["scan-1"].generated, review["scan-1"].real) == (4, 2, 1)
    assert review["scan-1"].precision == pytest.approx(2 / 3)
    assert review["scan-2"].reviewed == 0 and review["scan-2"].precision is None
    assert "66.7%" in result.text()


def test_a_queue_of_100000_flagged_rows_pages_fast(tmp_path):
    out = str(tmp_path / "big")
    uris = [f"s3://big/{i % 100:02d}/{i:06d}.jpg" for i in range(100_001)]
    # row groups of 1000 rows, as jobs.scan writes them: the queue reads 100 of them
    publish_synthetic(out, "big", date(2026, 6, 1), uris, seed=5, threshold=0.0, thumbnails=False, row_group_size=1000)
    start = time.monotonic()
    with running(ReviewConfig(reports=out)) as app:
        loaded = time.monotonic() - start
        times = []
        for query in ("offset=0", "offset=99950", "prefix=s3://big/42/&offset=500", "undecided=1&offset=50000"):
            t = time.monotonic()
            page = app.json(f"/api/queue?limit=50&{query}")
            times.append(time.monotonic() - t)
            assert len(page["rows"]) == 50
            scores = [r["score"] for r in page["rows"]]
            assert scores == sorted(scores, reverse=True)
        assert page["total"] == 100_000
        app.decide([(i, "real") for i in range(500)])
        t = time.monotonic()
        assert app.json("/api/queue?undecided=1&limit=50")["total"] == 100_000 - 500
        times.append(time.monotonic() - t)
    print(f"100,000 flagged rows: loaded in {loaded:.2f} s, pages in {', '.join(f'{x * 1000:.0f}' for x in times)} ms")
    assert loaded < 30 and max(times) < 1.0, (loaded, times)


def test_queue_filters_match_pandas(reports):
    queue = Queue.load(reports)
    want = flagged_rows(reports)
    decided = queue.decisions_of(latest(read_decisions(os.path.join(reports, "_decisions"))))
    for f, expect in ((QueueFilter(scan_id="scan-1"), want.scan_id == "scan-1"),
                      (QueueFilter(scan_date=date(2026, 5, 2)), want.scan_id == "scan-2"),
                      (QueueFilter(prefix="s3://up/a/0"), want.uri.str.startswith("s3://up/a/0"))):
        ids = queue.select(f, decided)
        assert sorted(queue.rows["uri"].iloc[ids]) == sorted(want[expect].uri), f


def test_bad_flags_fail_clearly(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--reports", "", "--port", "70000"])
    assert e.value.code == 2 and "--reports is empty" in capsys.readouterr().err
    assert main(["--reports", str(tmp_path / "nothing"), "--port", "0"]) == 1
    assert "review failed" in capsys.readouterr().err


def test_a_damaged_decisions_file_is_left_out_by_the_app_and_stops_the_export(reports, tmp_path, capsys):
    with running(ReviewConfig(reports=reports)) as app:
        app.decide([(0, "generated")])
    damaged = os.path.join(reports, "_decisions", "20260101T000000Z-x-000001.parquet")
    with open(damaged, "wb") as f:
        f.write(b"PAR1 not really parquet")
    with running(ReviewConfig(reports=reports)) as app:
        assert app.json("/api/meta")["counts"]["generated"] == 1  # the good file still counts
    assert "is not a decisions file" in capsys.readouterr().err
    assert main(["export", "--reports", reports, "--out", str(tmp_path / "labels.csv")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "review export failed" in err and damaged in err
    assert not (tmp_path / "labels.csv").exists()


def test_only_loopback_hosts_go_without_a_warning(reports, monkeypatch, capsys):
    assert [server.is_loopback(h) for h in ("127.0.0.1", "::1", "localhost", "127.0.0.2")] == [True] * 4
    assert [server.is_loopback(h) for h in ("0.0.0.0", "::", "192.168.1.5", "example.com")] == [False] * 4
    bound = []
    monkeypatch.setattr(server, "bind", lambda host, port: bound.append(host) or socket.socket())
    prepare(ReviewConfig(reports=reports, host="0.0.0.0"))[2].close()  # never really listens outside
    assert bound == ["0.0.0.0"] and "warning: listening on 0.0.0.0" in capsys.readouterr().err
