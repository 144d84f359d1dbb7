"""The demo's review step, without a person: the review app runs in this process on a
free loopback port, a scripted moderator records decisions through its HTTP API (with
the token, as the browser would), the decisions are exported as a training manifest,
and the detector is fine-tuned on them with ``jobs.train --init-from``.

The scripted moderator knows the truth from the sample's folder (``s3://uploads/real/...``
or ``.../fake/...``) and decides on images spread over the whole queue, queued at
threshold 0 so that both classes are there to learn from (the scan's own flags are nearly
all fake); the third one it marks unsure, which the export leaves out.

    python -m jobs.demo    # step 6
"""

from __future__ import annotations

import json
import urllib.request
from dataclasses import dataclass
from typing import Any

from jobs.review import ReviewConfig, export, prepare
from jobs.review.server import serving
from jobs.train import TrainConfig, init_from
from jobs.train import run as train

DECISIONS = 40  # images the scripted moderator decides


@dataclass(frozen=True)
class LoopResult:
    decided: dict[str, int]  # decision -> images
    exported: export.ExportResult
    trained: dict[str, Any]  # jobs.train's record of the fine-tune


def review_loop(*, scans: str, model: str, tuned: str, labels: str, uploads: str, batch_size: int) -> LoopResult:
    session, app, sock, token = prepare(ReviewConfig(reports=scans, threshold=0.0, reviewer="demo-moderator"))
    with serving(app, sock) as url:
        def call(path: str, body: dict | None = None) -> dict:
            request = urllib.request.Request(url.rstrip("/") + path, method="POST" if body else "GET",
                                             data=json.dumps(body).encode() if body else None,
                                             headers={"Authorization": f"Bearer {token}",
                                                      "Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=60) as answer:
                return json.loads(answer.read())

        queue, total = [], call("/api/queue?limit=1")["total"]
        while len(queue) < total:  # the whole queue, page by page (the API gives at most 200 rows)
            queue += call(f"/api/queue?offset={len(queue)}&limit=200")["rows"]
        rows = queue[::max(1, total // DECISIONS)][:DECISIONS]
        items = [{"id": r["id"], "decision": "unsure" if k == 2 else "generated" if "/fake/" in r["uri"] else "real"}
                 for k, r in enumerate(rows)]
        call("/api/decisions", {"reviewer": "demo-moderator", "items": items})
    decided = {d: sum(i["decision"] == d for i in items) for d in ("generated", "real", "unsure")}
    print(f"recorded {len(items)} decisions through the app's HTTP API: {decided} "
          f"(in {session.writer.uri})", flush=True)
    exported = export.run(export.ExportConfig(reports=scans, out=labels))
    print(exported.text(), flush=True)
    args = init_from.adopt({"data": labels, "output": tuned, "init_from": model, "epochs": 1, "batch_size": batch_size,
                            "lr": 0.0003, "num_workers": 1, "allow_prefix": (uploads,)})  # architecture and preset: the model's
    record = train(TrainConfig(**args))
    return LoopResult(decided=decided, exported=exported, trained=record)
