"""The report job: summary numbers against the Parquet content, filters, exports that
round-trip, the review page in headless Chromium (hostile keys stay text, no script
runs), and every snippet of docs/ANALYSTS.md.

    .venv/bin/python -m pytest tests/jobs/report/test_report.py -q

One module-level real scan (jobs.scan.run on tiny images, random weights) plus
synthetic reports written in the exact schema through jobs.report.store (several scan
dates, prefixes, error rows, hostile keys).
"""

from __future__ import annotations

import html
import html.parser
import io
import re
import shutil
import subprocess
import time
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from detector.checkpoint import save_checkpoint
from detector.model import build_model
from detector.presets import get_preset
from jobs import storage
from jobs.plots import scan_histogram_png, scan_histograms_png
from jobs.report import ReportConfig, main, run, select, table_text
from jobs.report import store as report_store
from jobs.report.page import json_for_script, render_page
from jobs.report.schema import REPORT_SCHEMA
from jobs.review.decisions import DecisionWriter, decisions_uri
from jobs.scan import ScanConfig
from jobs.scan import run as run_scan
from tests.helpers import publish_synthetic

REPO = Path(__file__).resolve().parents[3]
HOSTILE = "<img src=x onerror=alert(1)>.jpg"
MARKERS = ("<img src=x onerror=document.title='pwned'>.jpg",
           "</script><script>document.title='pwned'</script>.png",
           "<!--<script>document.title='pwned'</script>.jpg",
           "\u2028\"quote'&amp;.jpg")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (Debian package `chromium`; `make test` installs it as root)")


# -- reports -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> str:
    """Three scans on three dates, two prefixes, error rows, hostile keys."""
    out = str(tmp_path_factory.mktemp("synthetic") / "reports")
    a = [f"s3://uploads/a/{i:03d}.jpg" for i in range(30)]
    b = [f"s3://uploads/b/{i:03d}.png" for i in range(20)]
    publish_synthetic(out, "scan-1", date(2026, 5, 1), a[:20] + b[:10], seed=1, errors=3)
    publish_synthetic(out, "scan-2", date(2026, 5, 2), a[10:] + b[5:] + [f"s3://uploads/c/{m}" for m in MARKERS], seed=2, errors=2)
    publish_synthetic(out, "scan-3", date(2026, 5, 3), b, seed=3, errors=0, threshold=0.7)
    return out


def save_model(folder: Path) -> Path:
    torch.manual_seed(0)
    model = build_model("none")
    with torch.no_grad():  # a spread of scores and heat maps that are not all zero
        model.fc.weight[0].uniform_(0.5, 1.5)
        model.fc.weight[1].uniform_(-1.5, -0.5)
    save_checkpoint(folder, model, preset=get_preset("baseline", image_size=32), threshold=0.5)
    return folder


@pytest.fixture(scope="module")
def scanned(tmp_path_factory, ray_local) -> tuple[str, Path]:
    """A real jobs.scan report of tiny images, one with a hostile name, one broken."""
    root = tmp_path_factory.mktemp("scanned")
    images = root / "images"
    (images / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(7):
        pixels = rng.integers(0, 256, size=(40 + 4 * i, 48, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(images / ("sub" if i % 2 else "") / f"img_{i}.jpg", quality=90)
    Image.fromarray(rng.integers(0, 256, size=(40, 40, 3), dtype=np.uint8)).save(images / HOSTILE)
    (images / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    output = str(root / "reports")
    run_scan(ScanConfig(input=str(images), model=str(save_model(root / "model")), output=output,
                        batch_size=4, concurrency=1, scan_id="real-scan"))
    return output, images


def independent(output: str) -> pd.DataFrame:
    """The report read without jobs.report: pandas over the Hive folders."""
    df = pd.read_parquet(output, columns=["uri", "etag", "score", "flagged", "error", "model_version", "scan_id", "scan_date", "threshold"])
    df["scan_id"] = df["scan_id"].astype(str)
    df["scan_date"] = df["scan_date"].astype(str)
    return df


# -- summary -----------------------------------------------------------------------------


@pytest.mark.slow
def test_summary_matches_the_parquet_of_a_real_scan(scanned, capsys):
    output, images = scanned
    result = run(ReportConfig(input=output, top=3))
    df = independent(output)
    assert len(df) == 9 and df["error"].notna().sum() == 1
    (stats,) = result.scans
    scored = df["score"].dropna().astype(float)
    assert (stats.scan_id, stats.images, stats.scored, stats.errors) == ("real-scan", len(df), len(scored), 1)
    assert stats.flagged == int(df["flagged"].fillna(False).astype(bool).sum())
    assert stats.model_version == df["model_version"].iloc[0]
    assert stats.quantiles == pytest.approx([scored.quantile(q) for q in (0.5, 0.9, 0.99)], abs=1e-6)
    assert stats.max_score == pytest.approx(scored.max())
    flagged = df[df["flagged"].fillna(False).astype(bool)].sort_values(["score", "uri"], ascending=[False, True])
    assert [u for _, _, u in result.top] == flagged["uri"].head(3).tolist()

    # everything flagged at threshold 0: the hostile key is in the printed top table, as is
    assert main(["--input", output, "--threshold", "0", "--top", "20"]) == 0
    printed = capsys.readouterr().out
    assert "real-scan" in printed and str(images / HOSTILE) in printed
    line = next(ln for ln in printed.splitlines() if ln.startswith("real-scan"))
    assert re.search(rf"\b{len(df)}\s+{len(scored)}\s+1\s+100\.0%", line), line


def test_summary_per_scan_and_filters_match_pandas(synthetic):
    df = independent(synthetic)
    cases = [
        (ReportConfig(input=synthetic), df),
        (ReportConfig(input=synthetic, since=date(2026, 5, 2)), df[df.scan_date >= "2026-05-02"]),
        (ReportConfig(input=synthetic, until=date(2026, 5, 1)), df[df.scan_date <= "2026-05-01"]),
        (ReportConfig(input=synthetic, since=date(2026, 5, 2), until=date(2026, 5, 2)), df[df.scan_date == "2026-05-02"]),
        (ReportConfig(input=synthetic, prefix="s3://uploads/b/"), df[df.uri.str.startswith("s3://uploads/b/")]),
        (ReportConfig(input=synthetic, scan_id="scan-3"), df[df.scan_id == "scan-3"]),
        (ReportConfig(input=synthetic, flagged_only=True), df[df.flagged.fillna(False).astype(bool)]),
    ]
    for config, want in cases:
        result = run(config)
        assert result.rows == len(want), config
        got = {s.scan_id: (s.scan_date, s.images, s.flagged, s.errors, s.threshold) for s in result.scans}
        expected = {i: (g.scan_date.iloc[0], len(g), int(g.flagged.fillna(False).astype(bool).sum()),
                        int(g.error.notna().sum()), float(g.threshold.iloc[0])) for i, g in want.groupby("scan_id")}
        assert got == expected, config
        assert result.text().splitlines()[0] == f"{len(expected)} scans, {len(want)} images selected"
    assert [s.threshold for s in run(ReportConfig(input=synthetic)).scans] == pytest.approx([0.5, 0.5, 0.7])


def test_threshold_re_decides_flagged(synthetic):
    df = independent(synthetic)
    for threshold in (0.0, 0.3, 0.95, 1.0):
        result = run(ReportConfig(input=synthetic, threshold=threshold, flagged_only=True, top=1000))
        want = df[df.score.astype(float) >= threshold]
        assert result.rows == len(want) == sum(s.flagged for s in result.scans)
        assert all(s.threshold == pytest.approx(threshold) for s in result.scans)
        assert sorted(u for _, _, u in result.top) == sorted(want.uri)
        assert [s for s, _, _ in result.top] == sorted(want.score.astype(float), reverse=True)
    table = select(report_store.open_reports(synthetic), ReportConfig(input=synthetic, threshold=0.3))
    scored = table.filter(table["score"].is_valid())
    assert scored["flagged"].to_pylist() == [s >= 0.3 for s in scored["score"].to_pylist()]
    assert set(scored["label"].to_pylist()) <= {"fake", "real"} and table["threshold"].to_pylist() == pytest.approx([0.3] * table.num_rows)
    assert table.filter(table["score"].is_null())["flagged"].null_count == table["score"].null_count


def test_printed_tables_escape_terminal_controls():
    text = table_text(["uri"], [["s3://b/\x1b[2J\u202egpj.exe\nnext"]])
    assert "\x1b" not in text and "\u202e" not in text and "\n" not in text.splitlines()[-1]
    assert text.splitlines()[-1] == "s3://b/\\x1b[2J\\u202egpj.exe\\nnext"


def test_bad_arguments_fail_clearly(synthetic, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--input", synthetic, "--since", "2026-05-03", "--until", "2026-05-01"])
    with pytest.raises(SystemExit):
        main(["--input", synthetic, "--since", "May 1"])
    with pytest.raises(SystemExit):
        main(["--input", synthetic, "--treshold", "0.5"])  # misspelt: must fail, not be ignored
    assert main(["--input", str(tmp_path / "nothing")]) == 1
    assert "no published scans" in capsys.readouterr().err


# -- exports -----------------------------------------------------------------------------


def test_exports_round_trip(synthetic, tmp_path):
    config = ReportConfig(input=synthetic, prefix="s3://uploads/", since=date(2026, 5, 2), threshold=0.4,
                          csv=str(tmp_path / "x" / "sel.csv"), parquet=str(tmp_path / "sel.parquet"))
    run(config)
    want = select(report_store.open_reports(synthetic), config)
    assert want.num_rows == len(independent(synthetic).query("scan_date >= '2026-05-02'"))
    key = [("scan_id", "ascending"), ("uri", "ascending")]
    exported = pq.read_table(config.parquet)
    assert exported.schema.equals(REPORT_SCHEMA)
    assert exported.sort_by(key).equals(want.sort_by(key))

    light = want.drop_columns(["thumbnail", "cam"])
    back = pacsv.read_csv(config.csv, convert_options=pacsv.ConvertOptions(
        column_types=light.schema, strings_can_be_null=True, quoted_strings_can_be_null=False))
    assert back.column_names == light.column_names
    assert back.sort_by(key).equals(light.sort_by(key))
    assert "thumbnail" not in Path(config.csv).read_text().splitlines()[0]


def test_exports_and_page_to_s3(synthetic, s3_server, s3_env, tmp_path):
    s3_server.create_bucket("exports")
    config = ReportConfig(input=synthetic, scan_id="scan-1", csv="s3://exports/r/sel.csv",
                          parquet="s3://exports/r/sel.parquet", html="s3://exports/r/review.html",
                          histogram="s3://exports/r/scores.png")
    result = run(config)
    assert set(result.written) == {config.csv, config.parquet, config.html, config.histogram}
    table = pq.read_table(io.BytesIO(storage.read_bytes(config.parquet)))
    assert table.num_rows == result.rows == 30 and set(table["scan_id"].to_pylist()) == {"scan-1"}
    assert storage.read_bytes(config.histogram)[:8] == b"\x89PNG\r\n\x1a\n"
    assert b"Content-Security-Policy" in storage.read_bytes(config.html)


# -- review page -------------------------------------------------------------------------


class Dom(html.parser.HTMLParser):
    """The elements of a dumped DOM that the tests look at."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.imgs, self.rows, self.title, self.uris, self.stack = [], 0, "", [], []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.stack.append((tag, attrs.get("class") or ""))
        if tag == "img":
            self.imgs.append(attrs)
        if tag == "tr" and "row" in (attrs.get("class") or "").split():
            self.rows += 1

    def handle_endtag(self, tag):
        while self.stack and self.stack.pop()[0] != tag:
            pass

    def handle_data(self, data):
        if self.stack and self.stack[-1][0] == "title":
            self.title += data
        if self.stack and self.stack[-1] == ("td", "uri"):
            self.uris.append(data)


def chromium(tmp_path: Path, page: Path, *extra: str) -> str:
    profile = tmp_path / "chromium-profile"
    args = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-extensions",
            f"--user-data-dir={profile}", "--virtual-time-budget=10000", *extra, page.as_uri()]
    done = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.mark.slow
@needs_chromium
def test_review_page_of_a_real_scan_in_chromium(scanned, tmp_path, capsys):
    output, images = scanned
    page = tmp_path / "review.html"
    assert main(["--input", output, "--html", str(page), "--threshold", "0"]) == 0
    capsys.readouterr()
    text = page.read_text()
    assert "<img src=x" not in text and HOSTILE not in text  # the checked-by criterion
    assert text.count("data:image/png;base64,") == 1  # the scan's histogram
    dom = Dom(chromium(tmp_path, page, "--dump-dom"))
    scored = independent(output)["score"].notna().sum()
    assert dom.rows == scored == 8  # every scored image is flagged at 0; the broken one has no score
    thumbs = [i for i in dom.imgs if "thumb" in (i.get("class") or "")]
    assert len(thumbs) == 8 and all(i["src"].startswith("data:image/jpeg;base64,") for i in thumbs)
    assert str(images / HOSTILE) in dom.uris  # shown as text
    assert not [i for i in dom.imgs if i.get("src") == "x"]  # and never an element
    assert dom.title == "genscan review: flagged images"


@needs_chromium
def test_hostile_keys_run_no_script(synthetic, tmp_path):
    page = tmp_path / "review.html"
    run(ReportConfig(input=synthetic, html=str(page), scan_id="scan-2", html_rows="all"))
    text = page.read_text()
    for marker in MARKERS:
        assert marker not in text
    dom = Dom(chromium(tmp_path, page, "--dump-dom"))
    assert dom.title == "genscan review" and "pwned" not in dom.title
    want = independent(synthetic).query("scan_id == 'scan-2'")
    flagged = want[want.flagged.fillna(False).astype(bool)]
    assert dom.rows == len(flagged)  # "flagged only" is ticked at first; the rest is a toggle away
    for marker in MARKERS:
        if flagged.uri.eq(f"s3://uploads/c/{marker}").any():
            assert f"s3://uploads/c/{marker}" in dom.uris
    assert not [i for i in dom.imgs if i.get("src") == "x"]


@needs_chromium
def test_ten_thousand_rows_are_paged(tmp_path):
    rows = [{"uri": f"s3://b/{i:05d}.jpg", "score": i / 10_050, "flagged": True, "model_version": "m",
             "scan_id": "s", "scan_date": "2026-05-01", "error": None, "thumb": None} for i in range(10_050)]
    page = tmp_path / "big.html"
    page.write_text(render_page(rows, title="big"))
    dom = Dom(chromium(tmp_path, page, "--dump-dom"))
    assert dom.rows == 100
    assert dom.uris[:3] == ["s3://b/10049.jpg", "s3://b/10048.jpg", "s3://b/10047.jpg"]  # highest score first
    shot = tmp_path / "shot.png"
    chromium(tmp_path, page, f"--screenshot={shot}", "--window-size=1280,900")
    assert Image.open(shot).size == (1280, 900)


def test_page_escapes_and_policy(synthetic):
    page = render_page([{"uri": "x</script><!--<script>", "score": 0.5, "flagged": True, "thumb": "javascript:alert(1)"}],
                       title="<b>t</b>")
    assert "</script><!--" not in page and "<b>t</b>" not in page and "&lt;b&gt;t&lt;/b&gt;" in page
    assert page.count("<script") == 2 and page.count("</script>") == 2
    policy = html.unescape(re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', page).group(1))
    assert "default-src 'none'" in policy and "'unsafe-inline'" not in policy.split("script-src")[1]
    assert json_for_script({"k": "</script>&\u2028"}) == '{"k":"\\u003c/script\\u003e\\u0026\\u2028"}'


def test_histograms_are_pngs():
    for png in (scan_histogram_png([0.1, 0.9, float("nan")], threshold=0.5), scan_histogram_png([]),
                scan_histograms_png([("a", [0.2], 0.5), ("b", [], None), ("c", [0.7, 0.8], 0.6)])):
        assert Image.open(io.BytesIO(png)).format == "PNG"


# -- docs/ANALYSTS.md --------------------------------------------------------------------


def doc_blocks(kind: str) -> list[str]:
    text = (REPO / "docs" / "ANALYSTS.md").read_text()
    return re.findall(rf"```{kind}\n(.*?)```", text, flags=re.S)


def test_analyst_snippets_run(synthetic, s3_server, s3_env, tmp_path):
    """Every python block of docs/ANALYSTS.md runs against a small report (locally and
    through the S3 server), and its SQL answers match pandas."""
    s3_server.create_bucket("reports")
    storage.upload_dir(synthetic, "s3://reports/scans")
    local = str(tmp_path / "reports")
    shutil.copytree(synthetic, local)
    precision = write_decisions(local)
    namespace: dict = {}
    blocks = doc_blocks("python")
    assert len(blocks) >= 5
    for block in blocks:
        code = re.sub(r'"reports/scans"(?!, filesystem=)', repr(local).replace("\\", "\\\\"), block)  # local, not s3
        code = code.replace("review.csv", str(tmp_path / "review.csv"))
        exec(compile(code, "docs/ANALYSTS.md", "exec"), namespace)  # noqa: S102 - our own documentation

    df = independent(synthetic)
    df["flagged"] = df["flagged"].fillna(False).astype(bool)
    by_day = namespace["flag_rate_by_day"]
    scored = df[df.score.notna()]
    want = scored.groupby("scan_date").agg(scored=("uri", "size"), flagged=("flagged", "sum"))
    assert [str(d)[:10] for d in by_day["scan_date"]] == list(want.index)
    assert by_day["flagged"].tolist() == want["flagged"].tolist()
    assert by_day["flag_rate"].tolist() == pytest.approx((want["flagged"] / want["scored"]).tolist())

    prefixes = namespace["top_prefixes"]
    got = dict(zip(prefixes["prefix"], prefixes["flagged"]))
    want = df[df.flagged].assign(prefix=lambda d: d.uri.str.rsplit("/", n=1).str[0] + "/").groupby("prefix").size()
    assert got == want.to_dict()

    errors = namespace["error_breakdown"]
    kinds = df.error.dropna().str.split(":").str[0].value_counts()
    assert dict(zip(errors["error_kind"], errors["images"])) == kinds.to_dict()
    for name in ("plain_rows", "local_rows", "s3_rows", "bucket_rows"):
        assert namespace[name] == len(df), name
    assert namespace["every_folder"].count_rows() == len(df)
    assert namespace["per_scan"]["flagged"].sum() == df["flagged"].sum()
    assert len(namespace["recent_flagged"]) == ((df.scan_date >= "2026-05-01") & (df.score >= 0.9)).sum()
    by_scan = namespace["precision_by_scan"].set_index("scan_id")
    assert by_scan["flagged"].to_dict() == df[df.flagged].groupby("scan_id").size().to_dict()
    assert {s: (r.reviewed, r.confirmed, r.false_positives) for s, r in by_scan.iterrows() if r.reviewed} == {
        s: counts for s, (counts, _) in precision.items()}
    assert by_scan["precision"].dropna().to_dict() == pytest.approx({s: p for s, (_, p) in precision.items()})
    reviews = {r.scan_id: ((r.reviewed, r.generated, r.real), r.precision) for r in run(ReportConfig(input=local)).reviews}
    assert reviews == {**precision, "scan-3": ((0, 0, 0), None)}  # jobs.report says the same


def write_decisions(reports: str) -> dict[str, tuple[tuple[int, int, int], float]]:
    """Decisions on flagged rows of scan-1 and scan-2, with a change of mind and an undo;
    per scan the (reviewed, confirmed, false positives) and precision they make."""
    df = independent(reports)
    flagged = df[df.flagged.fillna(False).astype(bool)].sort_values("uri")
    one, two = flagged[flagged.scan_id == "scan-1"].head(4), flagged[flagged.scan_id == "scan-2"].head(2)

    def rows(table, decisions):
        return [{"uri": r.uri, "etag": r.etag, "scan_id": r.scan_id, "model_version": r.model_version,
                 "score": r.score, "decision": d, "reviewer": "ana"} for r, d in zip(table.itertuples(), decisions)]

    uri = decisions_uri(reports)
    first, second = DecisionWriter(uri), DecisionWriter(uri)  # two moderators
    first.append(rows(one, ["generated", "generated", "real", "generated"]) + rows(two, ["real", "unsure"]))
    time.sleep(0.01)  # decided_at orders them
    second.append(rows(one.iloc[[1]], ["real"]) + rows(one.iloc[[3]], ["cleared"]))  # a change of mind, an undo
    return {"scan-1": ((3, 1, 2), 1 / 3), "scan-2": ((2, 0, 1), 0.0)}


BIDI_KEYS = ("s3://b/invoice\u202egpj.exe", "s3://b/zero\u200bwidth.jpg", "s3://b/line\u2028sep.jpg")


def test_page_shows_bidi_and_zero_width_characters_escaped():
    rows = [{"uri": u, "score": 0.9, "flagged": True, "model_version": "m", "scan_id": "s", "scan_date": "2026-05-01",
             "error": "fetch: bad \u202ename", "thumb": None} for u in BIDI_KEYS]
    page = render_page(rows, title="t")
    assert "\\\\u202e" in page and "\\\\u200b" in page  # escaped text inside the JSON block
    assert not any(c in page for c in "\u202e\u200b\u2028")


@needs_chromium
def test_page_renders_bidi_and_zero_width_characters_escaped_in_chromium(tmp_path):
    rows = [{"uri": u, "score": 0.9, "flagged": True, "model_version": "m", "scan_id": "s", "scan_date": "2026-05-01",
             "error": None, "thumb": None} for u in BIDI_KEYS]
    page = tmp_path / "bidi.html"
    page.write_text(render_page(rows, title="t"))
    dom = Dom(chromium(tmp_path, page, "--dump-dom"))
    assert sorted(dom.uris) == sorted(["s3://b/invoice\\u202egpj.exe", "s3://b/zero\\u200bwidth.jpg",
                                       "s3://b/line\\u2028sep.jpg"])


def test_review_page_shows_each_scans_model_card_escaped(tmp_path):
    from jobs.report.page import ScanPanel
    from jobs.storage.models import CARD_FILE, read_card

    model = tmp_path / "model"
    model.mkdir()
    (model / CARD_FILE).write_text("# Model card: sha256-abc\n- threshold 0.61\n<script>alert(1)</script>\u202e\n")
    card = read_card(str(model))
    assert card is not None and read_card(str(tmp_path / "no-model")) is None
    page = render_page([], title="t", scans=[ScanPanel(scan_id="s1", facts=(("scan", "s1"),), card=card)])
    assert "<details class=\"card\"><summary>model card</summary>" in page and "threshold 0.61" in page
    assert "<script>alert(1)" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;\\u202e" in page
