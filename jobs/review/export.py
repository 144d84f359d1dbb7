"""The moderators' decisions as a training manifest: ``uri,label`` of the decided images.

    python -m jobs.review export --reports reports/scans --out labels.csv
    python -m jobs.train --data labels.csv --init-from MODEL --output MODEL-v2 --allow-prefix s3://uploads

"generated" is label ``fake``, "real" (a false positive) is ``real``; "unsure" and taken
back ("cleared") decisions are left out. An image decided at several versions (etags)
counts once, by its latest decision: training reads the object as it is now. Training on
these labels trains on what people saw, not on the model's own predictions. The counts
are printed.
"""

from __future__ import annotations

import argparse
import io
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.csv as pacsv

from jobs import cli, storage
from jobs.review import decisions as log


@dataclass(frozen=True)
class ExportConfig:
    reports: str
    out: str
    decisions: str | None = None

    def __post_init__(self) -> None:
        p = cli.uri_problems(reports=self.reports, out=self.out, decisions=self.decisions)
        if p:
            raise ValueError("; ".join(p))


@dataclass(frozen=True)
class ExportResult:
    fake: int
    real: int
    unsure: int
    out: str

    def text(self) -> str:
        return (f"exported {self.fake + self.real} decided images to {self.out}: {self.fake} fake (decided generated), "
                f"{self.real} real; left out {self.unsure} unsure")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m jobs.review export", description=__doc__.split("\n\n")[0],
                                allow_abbrev=False)
    p.add_argument("--reports", required=True, help="report root whose _decisions/ to export (local or s3://)")
    p.add_argument("--out", required=True, help="the manifest to write: a .csv file (local or s3://)")
    p.add_argument("--decisions", help="the decisions folder, when not REPORTS/_decisions")
    cli.add_debug_flag(p)
    return p


def main(argv: list[str] | None = None) -> int:
    config, debug = cli.parse_config(get_args_parser(), ExportConfig, argv)
    code, result = cli.run_main("review export", lambda: run(config), debug=debug)
    if result is not None:
        print(result.text(), flush=True)
    return code


def run(config: ExportConfig) -> ExportResult:
    uri = log.decisions_uri(config.reports, config.decisions)
    table = log.read_decisions(uri)
    if not table.num_rows:
        raise FileNotFoundError(f"no decisions under {uri} (record some with python -m jobs.review --reports ...)")
    current = log.latest(table)
    current = current.sort_values("decided_at", kind="stable").drop_duplicates("uri", keep="last")
    labelled = current[current["decision"].isin(list(log.LABELS))].sort_values("uri")
    manifest = pa.table({"uri": labelled["uri"].tolist(),
                         "label": [log.LABELS[d] for d in labelled["decision"]]})
    out = io.BytesIO()
    pacsv.write_csv(manifest, out)  # quotes every string: keys with commas or quotes stay whole
    with cli.writing(config.out):
        storage.write_bytes(config.out, out.getvalue())
    counts = labelled["decision"].value_counts()
    return ExportResult(fake=int(counts.get("generated", 0)), real=int(counts.get("real", 0)),
                        unsure=int((current["decision"] == "unsure").sum()), out=config.out)
