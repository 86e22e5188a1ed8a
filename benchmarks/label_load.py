"""Load on the labelling app: concurrent labelers against ``rlfm label serve`` on 127.0.0.1.

For each database (SQLite in WAL mode, and a PostgreSQL server this script starts in a
temporary folder with fsync on), it

1. **load**: ``--labelers`` (50) concurrent labelers each take and submit ``--submissions``
   (100) assignments over HTTP (``POST /api/projects/{id}/next``, then ``POST
   /api/assignments/{id}/submit``); every 10th submission is sent twice at once (a double
   click), and a request whose connection drops is sent again (up to 3 times, as a person
   clicks again). Reported: submissions/s (acknowledged submissions over the load's wall time), p50
   and p95 latency of a submit request;
2. **count check**: the stored labels against the acknowledged ones: lost (acknowledged but not
   stored), duplicated (more than one label for an assignment, or for an item and labeler),
   orphans (an assignment marked submitted without its label, or the other way round);
3. **kill -9**: the load starts again on a second project, the server is killed with SIGKILL
   mid-load, the same checks run on what it left (every stored label whole: its digest matches
   its content), the server restarts on the same database and the labelers finish the work.

Not a test: CI does not run it. Every request goes to 127.0.0.1 only, and the load is bounded
(labelers × submissions). Labelers' sessions are made in the database directly (logging in is
not what is measured). Needs the dev extra (httpx) and, for PostgreSQL, its server binaries.

    python benchmarks/label_load.py                       # both databases, 50 × 100
    python benchmarks/label_load.py --backend sqlite --labelers 10 --submissions 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
from sqlalchemy import func, select

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rlfm.feedback import auth  # noqa: E402
from rlfm.feedback import labels as lb  # noqa: E402
from rlfm.feedback.db import Annotation, Assignment, Database, User, open_db  # noqa: E402
from tests.feedback.conftest import live_server, postgres_bin, postgres_cluster  # noqa: E402

REPLIES = [
    "Good my lord, I pray you, your lady sleeps in her chamber.",
    "Away, thou knave!",
    "She is gone to the orchard, sir.",
    "I know not.",
]


def setup_project(db: Database, name: str, n_items: int, labelers: list[int], overlap: int) -> int:
    with db.write() as s:
        p = lb.create_project(s, name, overlap=overlap)
        rows = [
            lb.ImportedItem(
                f"Romeo.\nWhere is she, {name} {i}?\n\nNurse.\n",
                REPLIES,
                "rank",
                None,
                None,
                f"row {i}",
            )
            for i in range(n_items)
        ]
        lb.add_items(s, p, rows, gold=False, name=name)
        for uid in labelers:
            s.add(
                lb.Membership(project_id=p.id, user_id=uid, role="labeler", self_assessment="Any.")
            )
        return p.id


def make_labelers(db: Database, n: int) -> list[tuple[int, str, str]]:
    """n labelers with a login session each: (user id, session cookie, CSRF token)."""
    out = []
    with db.write() as s:
        for i in range(n):
            u = User(email=f"load-{i}@example.org")
            s.add(u)
            s.flush()
            token, row = auth.start_session(s, u)
            out.append((u.id, token, row.csrf_token))
    return out


def payload(k: int, rng: random.Random) -> dict:
    order = list(range(k))
    rng.shuffle(order)
    return {
        "ranking": order,
        "ratings": [rng.randint(1, 7) for _ in range(k)],
        "flags": [dict.fromkeys(lb.FLAG_NAMES, False) for _ in range(k)],
        "notes": "",
        "time_ms": rng.randint(1000, 60000),
    }


class Load:
    """The shared record of a load run."""

    def __init__(self) -> None:
        self.acked: set[int] = set()  # assignment ids whose submission answered 200
        self.latencies: list[float] = []
        self.duplicates_acked = 0
        self.errors = 0
        self.retries = 0  # requests sent again after a dropped connection (as a person would)
        self.error_samples: list[str] = []  # the first few failures, as answered
        self.stop = asyncio.Event()

    def failed(self, what: str) -> None:
        self.errors += 1
        if len(self.error_samples) < 5:
            self.error_samples.append(what[:300])


async def post(
    c: httpx.AsyncClient, url: str, load: Load, body: dict | None = None
) -> httpx.Response:
    """POST, sent again (up to 3 times) when the connection drops before the answer: both
    endpoints are idempotent (the open assignment again; a repeated label stored once)."""
    for attempt in range(4):
        try:
            return await c.post(url, json=body)
        except httpx.TransportError:
            if load.stop.is_set() or attempt == 3:
                raise
            load.retries += 1
    raise AssertionError("unreachable")


async def labeler(
    url: str, pid: int, who: tuple[int, str, str], n: int, seed: int, load: Load
) -> None:
    _, cookie, csrf = who
    rng = random.Random(seed)
    headers = {"X-CSRF-Token": csrf}
    async with httpx.AsyncClient(
        base_url=url, cookies={"rlfm_session": cookie}, headers=headers, timeout=60
    ) as c:
        done = 0
        while done < n and not load.stop.is_set():
            try:
                r = await post(c, f"/api/projects/{pid}/next", load)
                a = r.json()["assignment"] if r.status_code == 200 else None
                if a is None:
                    if r.status_code != 200:
                        load.failed(f"next: {r.status_code} {r.text}")
                    return
                body = payload(len(a["outputs"]), rng)
                t0 = time.perf_counter()
                if done % 10 == 9:  # a double click: the same submission twice at once
                    rs = await asyncio.gather(
                        post(c, f"/api/assignments/{a['id']}/submit", load, body),
                        post(c, f"/api/assignments/{a['id']}/submit", load, body),
                    )
                else:
                    rs = [await post(c, f"/api/assignments/{a['id']}/submit", load, body)]
                load.latencies.append(time.perf_counter() - t0)
                oks = [x for x in rs if x.status_code == 200]
                if oks:
                    load.acked.add(a["id"])
                    load.duplicates_acked += sum(x.json()["duplicate"] for x in oks)
                else:
                    load.failed(f"submit: {rs[0].status_code} {rs[0].text}")
                done += 1
            except (httpx.TransportError, ValueError) as e:
                if load.stop.is_set():
                    return
                load.failed(f"{type(e).__name__}: {e}")
                return


async def run_load(
    url: str,
    pid: int,
    labelers: list,
    n: int,
    load: Load,
    kill_after: float | None = None,
    proc=None,
) -> float:
    t0 = time.perf_counter()
    tasks = [
        asyncio.create_task(labeler(url, pid, who, n, 1000 * pid + i, load))
        for i, who in enumerate(labelers)
    ]
    if kill_after is not None:
        await asyncio.sleep(kill_after)
        os.kill(proc.pid, signal.SIGKILL)
        load.stop.set()
    await asyncio.gather(*tasks)
    return time.perf_counter() - t0


def check(db: Database, pid: int, acked: set[int], overlap: int) -> dict:
    """Stored labels against acknowledged submissions."""
    with db.read() as s:
        anns = s.scalars(select(Annotation).where(Annotation.project_id == pid)).all()
        submitted = set(
            s.scalars(
                select(Assignment.id).where(
                    Assignment.project_id == pid, Assignment.status == "submitted"
                )
            )
        )
        per_item = s.execute(
            select(Annotation.item_id, func.count())
            .where(Annotation.project_id == pid)
            .group_by(Annotation.item_id)
        ).all()
    stored = [a.assignment_id for a in anns]
    whole = all(lb.label_digest(a.label) == a.digest and len(a.label["levels"]) == 4 for a in anns)
    return {
        "stored": len(anns),
        "acknowledged": len(acked),
        "lost": len(acked - set(stored)),
        "duplicated": (len(stored) - len(set(stored)))
        + (len(anns) - len({(a.item_id, a.user_id) for a in anns})),
        "over_overlap": sum(1 for _, n in per_item if n > overlap),
        "orphans": len(submitted ^ set(stored)),
        "whole": whole,
    }


def bench(backend: str, url_or_path: str, args: argparse.Namespace, workdir: Path) -> dict:
    db = open_db(url_or_path)
    labelers = make_labelers(db, args.labelers)
    ids = [u for u, _, _ in labelers]
    # enough items that every labeler can make all its submissions (an item goes to a labeler
    # once, so the last free slots may all be on items a labeler has labelled already)
    n_items = math.ceil(args.labelers * args.submissions / args.overlap) + args.labelers
    pid = setup_project(db, "load", n_items, ids, args.overlap)
    kill_pid = setup_project(db, "kill", n_items, ids, args.overlap)
    serve_db: Path | str = Path(url_or_path) if backend == "sqlite" else url_or_path
    result: dict = {"backend": backend}
    with live_server(serve_db, workdir) as srv:
        load = Load()
        wall = asyncio.run(run_load(srv.url, pid, labelers, args.submissions, load))
    lat = sorted(load.latencies)
    result.update(
        submissions=len(load.acked),
        wall_s=round(wall, 2),
        per_s=round(len(load.acked) / wall, 1),
        p50_ms=round(1000 * statistics.median(lat), 1),
        p95_ms=round(1000 * lat[int(0.95 * (len(lat) - 1))], 1),
        errors=load.errors,
        error_samples=load.error_samples,
        retries=load.retries,
        double_clicks_answered_duplicate=load.duplicates_acked,
        check=check(db, pid, load.acked, args.overlap),
    )
    # kill -9 mid-load, check, restart, finish
    with live_server(serve_db, workdir) as srv:
        load2 = Load()
        asyncio.run(
            run_load(
                srv.url,
                kill_pid,
                labelers,
                args.submissions,
                load2,
                kill_after=args.kill_after,
                proc=srv.process,
            )
        )
        srv.process.wait()
    after_kill = check(db, kill_pid, load2.acked, args.overlap)
    with live_server(serve_db, workdir) as srv:
        restarted = httpx.get(srv.url + "/healthz").status_code == 200
        load3 = Load()
        asyncio.run(run_load(srv.url, kill_pid, labelers, args.submissions, load3))
    final = check(db, kill_pid, load2.acked | load3.acked, args.overlap)
    result["kill"] = {
        "acked_before_kill": len(load2.acked),
        "after_kill": after_kill,
        "restarted": restarted,
        "final": final,
    }
    db.close()
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    ap.add_argument("--labelers", type=int, default=50)
    ap.add_argument("--submissions", type=int, default=100)
    ap.add_argument("--overlap", type=int, default=3)
    ap.add_argument("--kill-after", type=float, default=4.0, help="seconds into the second load")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="rlfm-load-") as tmp:
        workdir = Path(tmp)
        if args.backend in ("sqlite", "both"):
            results.append(bench("sqlite", str(workdir / "labels.db"), args, workdir))
            print(json.dumps(results[-1], indent=1), flush=True)
        if args.backend in ("postgresql", "both"):
            if postgres_bin() is None:
                print("postgresql: skipped (no initdb/pg_ctl: apt-get install postgresql)")
            else:
                with postgres_cluster(durable=True) as pg:
                    url = pg.create_database("rlfm_load")
                    results.append(bench("postgresql", url, args, workdir))
                    print(json.dumps(results[-1], indent=1), flush=True)
    print()
    print(f"{args.labelers} labelers × {args.submissions} submissions, overlap {args.overlap}")
    print(
        "backend     submissions  submissions/s  p50 ms  p95 ms  lost  duplicated  kill -9: partial  restart"
    )
    for r in results:
        c, k = r["check"], r["kill"]
        partial = k["after_kill"]["orphans"] + (0 if k["after_kill"]["whole"] else 1)
        lost = c["lost"] + k["after_kill"]["lost"] + k["final"]["lost"]
        dup = (
            c["duplicated"]
            + k["final"]["duplicated"]
            + c["over_overlap"]
            + k["final"]["over_overlap"]
        )
        print(
            f"{r['backend']:<10}  {r['submissions']:>11}  {r['per_s']:>13}  {r['p50_ms']:>6}  {r['p95_ms']:>6}  "
            f"{lost:>4}  {dup:>10}  {partial:>16}  {'ok' if k['restarted'] else 'FAILED'}"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
