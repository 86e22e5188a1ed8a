"""The web app's endpoints, each with good and bad input and with other people's ids, on SQLite
and on PostgreSQL (the ``db`` fixture runs every test on both)."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from rlfm.feedback import auth
from rlfm.feedback import labels as lb
from rlfm.feedback.db import (
    Annotation,
    Assignment,
    Invite,
    Item,
    LoginAttempt,
    LoginSession,
    Project,
    utcnow,
)

from .conftest import add_person, add_project, rank_payload

PASSWORD = "correct horse battery"


def csrf_of(html: str) -> str:
    m = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert m, html
    return m.group(1)


def next_assignment(client, pid: int) -> dict:
    r = client.post(f"/api/projects/{pid}/next")
    assert r.status_code == 200, r.text
    return r.json()["assignment"]


def count(db, model, *where) -> int:
    with db.read() as s:
        return s.scalar(select(func.count()).select_from(model).where(*where))


# ---------------------------------------------------------------------------- logging in


def test_login_sets_a_safe_session_cookie_and_wrong_passwords_fail_alike(db, app_client):
    """Logging in gives an HttpOnly, SameSite=Strict cookie (Secure over HTTPS); a wrong
    password and an unknown email get the same 401 message."""
    add_person(db, "ada@example.org", password=PASSWORD)
    for base, secure in (("http://testserver", False), ("https://testserver", True)):
        c = app_client(base_url=base)
        token = csrf_of(c.get("/login").text)
        r = c.http.post(
            "/login", data={"email": "Ada@Example.org", "password": PASSWORD, "csrf_token": token}
        )
        assert r.status_code == 303 and r.headers["location"] == "/projects"
        cookie = [h for h in r.headers.get_list("set-cookie") if h.startswith("rlfm_session=")][0]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie
        assert ("Secure" in cookie) is secure
        assert c.get("/projects").status_code == 200
        token = cookie.split(";")[0].split("=", 1)[1]
        with db.read() as s:
            hashes = s.scalars(select(LoginSession.token_hash)).all()
        assert auth.token_hash(token) in hashes and token not in hashes  # stored hashed
    c = app_client()
    token = csrf_of(c.get("/login").text)
    wrong = c.http.post(
        "/login", data={"email": "ada@example.org", "password": "x" * 12, "csrf_token": token}
    )
    nobody = c.http.post(
        "/login", data={"email": "bob@example.org", "password": PASSWORD, "csrf_token": token}
    )
    assert wrong.status_code == nobody.status_code == 401
    assert "wrong email or password" in wrong.text and "wrong email or password" in nobody.text


def test_login_is_rate_limited(db, app_client):
    """After 5 failed logins for an email, even the right password is refused (429) for the
    window; the failures were recorded although each login answered 401."""
    add_person(db, "ada@example.org", password=PASSWORD)
    c = app_client()
    token = csrf_of(c.get("/login").text)
    for _ in range(auth.MAX_FAILURES_PER_EMAIL):
        r = c.http.post(
            "/login",
            data={"email": "ada@example.org", "password": "nope-nope-nope", "csrf_token": token},
        )
        assert r.status_code == 401
    assert count(db, LoginAttempt, LoginAttempt.ok.is_(False)) == auth.MAX_FAILURES_PER_EMAIL
    r = c.http.post(
        "/login", data={"email": "ada@example.org", "password": PASSWORD, "csrf_token": token}
    )
    assert r.status_code == 429 and "too many failed logins" in r.text
    assert "rlfm_session" not in r.headers.get("set-cookie", "")


def test_login_needs_the_csrf_token_and_a_same_origin(db, app_client):
    add_person(db, "ada@example.org", password=PASSWORD)
    c = app_client()
    token = csrf_of(c.get("/login").text)
    r = c.http.post("/login", data={"email": "ada@example.org", "password": PASSWORD})
    assert r.status_code == 403 and "CSRF" in r.text
    r = c.http.post(
        "/login",
        data={"email": "ada@example.org", "password": PASSWORD, "csrf_token": token},
        headers={"Origin": "https://evil.example"},
    )
    assert r.status_code == 403 and "cross-site" in r.text


def test_logout_ends_the_session(db, app_client):
    uid = add_person(db, "ada@example.org")
    c = app_client(uid)
    assert c.http.post("/logout").status_code == 403  # no CSRF token
    assert c.get("/projects").status_code == 200
    r = c.http.post("/logout", data={"csrf_token": c.csrf})
    assert r.status_code == 303
    c.http.cookies.clear()
    assert c.post("/api/projects/1/next").status_code == 401


def test_invite_sets_a_password_once(db, app_client):
    """The invite link shows the email, refuses a short or mistyped password (the link stays
    valid), sets a good one and logs in; the link then no longer works."""
    with db.write() as s:
        link = auth.invite(s, "new@example.org", admin=True)
    c = app_client()
    page = c.get(link.path)
    assert page.status_code == 200 and "new@example.org" in page.text
    token = csrf_of(page.text)
    short = c.http.post(
        link.path, data={"password": "short", "password_again": "short", "csrf_token": token}
    )
    assert short.status_code == 422 and "at least 10 characters" in short.text
    differ = c.http.post(
        link.path,
        data={"password": PASSWORD, "password_again": PASSWORD + "!", "csrf_token": token},
    )
    assert differ.status_code == 422 and "differ" in differ.text
    no_csrf = c.http.post(link.path, data={"password": PASSWORD, "password_again": PASSWORD})
    assert no_csrf.status_code == 403
    ok = c.http.post(
        link.path, data={"password": PASSWORD, "password_again": PASSWORD, "csrf_token": token}
    )
    assert ok.status_code == 303 and "rlfm_session=" in ok.headers["set-cookie"]
    assert c.get("/admin").status_code == 200
    with db.read() as s:
        stored = s.scalar(select(lb.User.password_hash).where(lb.User.email == "new@example.org"))
        tokens = s.scalars(select(Invite.token_hash)).all()
    assert stored.startswith("$argon2id$") and PASSWORD not in stored
    assert link.token not in tokens and auth.token_hash(link.token) in tokens  # stored hashed
    again = app_client().get(link.path)
    assert again.status_code == 404 and "not valid" in again.text
    assert app_client().get("/invite/not-a-token").status_code == 404


def test_expired_invite_and_new_invite_replaces_old(db, app_client):
    with db.write() as s:
        first = auth.invite(s, "new@example.org", admin=True)
        second = auth.invite(s, "new@example.org", admin=True)
    assert app_client().get(first.path).status_code == 404  # replaced by the second
    assert app_client().get(second.path).status_code == 200
    with db.write() as s:
        inv = s.scalar(select(Invite).where(Invite.token_hash == auth.token_hash(second.token)))
        inv.expires_at = utcnow() - timedelta(seconds=1)
    assert app_client().get(second.path).status_code == 404


def test_security_headers_on_pages_and_api(db, app_client):
    c = app_client()
    for r in (c.get("/login"), c.get("/healthz"), c.post("/api/projects/1/next")):
        csp = r.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp
        assert "frame-ancestors 'none'" in csp
        assert r.headers["x-frame-options"] == "DENY"
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["referrer-policy"] == "same-origin"
        assert r.headers["cache-control"] == "no-store"


def test_anonymous_requests_are_refused(db, app_client):
    pid = add_project(db)
    c = app_client()
    assert c.get("/projects").headers["location"] == "/login"
    assert c.get(f"/projects/{pid}/label").headers["location"] == "/login"
    for url in (
        f"/api/projects/{pid}/next",
        "/api/assignments/1/submit",
        "/api/assignments/1/skip",
    ):
        r = c.post(url, {})
        assert r.status_code == 401 and r.json()["detail"] == "not logged in"
    assert c.get("/api/assignments/1").status_code == 401


# ---------------------------------------------------------------------------- labelling


def test_assignment_shows_a_shuffled_order_and_stores_the_original_one(db, app_client):
    """The outputs come in the assignment's stored permutation; a ranking of shown positions
    is stored in the item's original order (ranking, ratings and flags alike)."""
    pid = add_project(db, items=1)
    uid = add_person(db, "ada@example.org", project=pid)
    c = app_client(uid)
    a = next_assignment(c, pid)
    with db.read() as s:
        perm = s.get(Assignment, a["id"]).permutation
        item = s.get(Item, s.get(Assignment, a["id"]).item_id)
    assert sorted(perm) == [0, 1, 2, 3]
    assert a["outputs"] == [item.completions[i] for i in perm]
    assert next_assignment(c, pid)["id"] == a["id"]  # the open one again
    assert c.get(f"/api/assignments/{a['id']}").json() == a
    flags = [dict.fromkeys(lb.FLAG_NAMES, False) for _ in range(4)]
    flags[2]["violent"] = True
    body = rank_payload(ranking=[2, 0, 3, 1], ratings=[6, 2, 7, 1], flags=flags)
    r = c.post(f"/api/assignments/{a['id']}/submit", body)
    assert r.status_code == 200 and r.json()["duplicate"] is False
    with db.read() as s:
        ann = s.scalar(select(Annotation))
    shown_levels = [1, 3, 0, 2]  # levels of shown positions 0..3 for the ranking [2, 0, 3, 1]
    levels = [0] * 4
    for p, i in enumerate(perm):
        levels[i] = shown_levels[p]
    assert ann.label["levels"] == levels
    assert ann.label["ranking"] == [perm[2], perm[0], perm[3], perm[1]]
    assert ann.label["ratings"][perm[2]] == 7 and ann.label["ratings"][perm[3]] == 1
    assert ann.label["flags"][perm[2]]["violent"] is True
    assert sum(f["violent"] for f in ann.label["flags"]) == 1
    assert ann.client_ms == 1234 and ann.server_ms >= 0


def test_each_labeler_sees_an_order_of_their_own(db, app_client):
    """The shown order is drawn per assignment: over 10 items two labelers see orders that
    differ somewhere, and not every order is the imported one (each of 24 orders is equally
    likely: all 20 the same by chance has probability 24^-19)."""
    pid = add_project(db, items=10, overlap=2)
    perms = {}
    for who in ("ada", "bob"):
        c = app_client(add_person(db, f"{who}@example.org", project=pid))
        for _ in range(10):
            a = next_assignment(c, pid)
            with db.read() as s:
                row = s.get(Assignment, a["id"])
                perms[(who, row.item_id)] = tuple(row.permutation)
            assert c.post(f"/api/assignments/{a['id']}/submit", rank_payload()).status_code == 200
    assert any(perms[("ada", i)] != perms[("bob", i)] for _, i in perms)
    assert len(set(perms.values())) > 1 and any(p != (0, 1, 2, 3) for p in perms.values())


def test_submitting_twice_stores_once(db, app_client):
    """A double click (the same label twice) stores one annotation; a different label for the
    submitted assignment is refused with 409 and changes nothing."""
    pid = add_project(db, items=1)
    c = app_client(add_person(db, "ada@example.org", project=pid))
    a = next_assignment(c, pid)
    first = c.post(f"/api/assignments/{a['id']}/submit", rank_payload())
    second = c.post(f"/api/assignments/{a['id']}/submit", rank_payload(time_ms=99))
    assert first.status_code == second.status_code == 200
    assert second.json()["duplicate"] is True
    assert second.json()["annotation"] == first.json()["annotation"]
    other = c.post(f"/api/assignments/{a['id']}/submit", rank_payload(ranking=[3, 2, 1, 0]))
    assert other.status_code == 409 and "different label" in other.json()["detail"]
    assert count(db, Annotation) == 1
    with db.read() as s:
        assert (
            s.scalar(select(Annotation)).label["ranking"][0]
            == s.get(Assignment, a["id"]).permutation[0]
        )


BAD = [
    (rank_payload(ranking=[0, 1, 2, 2]), "twice"),
    (rank_payload(ranking=[0, 1, 2]), "leaves out"),
    (rank_payload(ranking=[0, 1, 2, 4]), "outside 0..3"),
    (rank_payload(ranking=[[0, 1], 2, 3]), "does not allow ties"),
    (rank_payload(ranking="0123"), "must be a list"),
    (rank_payload(ratings=[0, 1, 2, 3]), "ratings[0]: 0 is outside 1..7"),
    (rank_payload(ratings=[7, 7, 7, 8]), "ratings[3]: 8 is outside 1..7"),
    (rank_payload(ratings=["5", 1, 1, 1]), "expected an integer"),
    (rank_payload(ratings=[True, 1, 1, 1]), "expected an integer"),
    (rank_payload(ratings=[1, 2, 3]), "expected 4 entries"),
    (rank_payload(flags=[{"violent": False}] * 4), "wrong or missing"),
    (rank_payload(flags=[dict.fromkeys(lb.FLAG_NAMES, 1)] * 4), "expected true or false"),
    (rank_payload(flags="no"), "expected a list"),
    (rank_payload(notes=5), "notes: expected a string"),
    (rank_payload(notes="x" * 10_001), "at most 10000"),
    (rank_payload(time_ms=-1), "time_ms"),
    (rank_payload(extra=1), "unknown field(s): extra"),
    ({"ranking": [0, 1, 2, 3]}, "missing field(s): flags, ratings"),
    ([1, 2, 3], "a submission is a JSON object"),
]


@pytest.mark.parametrize("body,message", BAD, ids=[m for _, m in BAD])
def test_bad_submissions_are_refused_and_store_nothing(db, app_client, body, message):
    """Server-side validation: a clear 422 naming the field, nothing stored, the assignment
    still open."""
    pid = add_project(db, items=1)
    c = app_client(add_person(db, "ada@example.org", project=pid))
    a = next_assignment(c, pid)
    r = c.post(f"/api/assignments/{a['id']}/submit", body)
    assert r.status_code == 422, r.text
    assert message in r.json()["detail"]
    assert count(db, Annotation) == 0
    with db.read() as s:
        assert s.get(Assignment, a["id"]).status == "open"


def test_invalid_json_body(db, app_client):
    pid = add_project(db, items=1)
    c = app_client(add_person(db, "ada@example.org", project=pid))
    a = next_assignment(c, pid)
    r = c.http.post(
        f"/api/assignments/{a['id']}/submit",
        content=b"{not json",
        headers={"X-CSRF-Token": c.csrf, "Content-Type": "application/json"},
    )
    assert r.status_code == 400 and "not valid JSON" in r.json()["detail"]


def test_an_oversized_request_is_refused(db, app_client):
    pid = add_project(db, items=1)
    c = app_client(add_person(db, "ada@example.org", project=pid))
    a = next_assignment(c, pid)
    r = c.post(f"/api/assignments/{a['id']}/submit", rank_payload(notes="x" * 1_100_000))
    assert r.status_code == 413 and "too large" in r.json()["detail"]
    assert count(db, Annotation) == 0


def test_a_failed_transaction_stores_nothing(db):
    """Whole or nothing: an error after the label is added (before the commit) leaves no
    annotation and the assignment open."""
    pid = add_project(db, items=1)
    uid = add_person(db, "ada@example.org", project=pid)
    with db.write() as s:
        a = lb.next_assignment(s, s.get(Project, pid), s.get(lb.User, uid))
        aid = a.id
    with pytest.raises(RuntimeError), db.write() as s:
        lb.submit(s, s.get(Assignment, aid), rank_payload())
        s.flush()
        raise RuntimeError("the process dies here")
    assert count(db, Annotation) == 0
    with db.read() as s:
        assert s.get(Assignment, aid).status == "open"


def test_ties_where_allowed(db, app_client):
    pid = add_project(db, items=1, ties=True)
    c = app_client(add_person(db, "ada@example.org", project=pid))
    a = next_assignment(c, pid)
    r = c.post(f"/api/assignments/{a['id']}/submit", rank_payload(ranking=[[0, 2], 1, 3]))
    assert r.status_code == 200
    with db.read() as s:
        perm = s.get(Assignment, a["id"]).permutation
        ann = s.scalar(select(Annotation))
    assert sorted(ann.label["ranking"][0]) == sorted([perm[0], perm[2]])
    all_tied = c.post(f"/api/assignments/{a['id']}/submit", rank_payload(ranking=[[0, 1, 2, 3]]))
    assert all_tied.status_code == 422 and "ties every completion" in all_tied.json()["detail"]


def test_skip_frees_the_slot_for_someone_else(db, app_client):
    """Overlap 1: a skipped item goes to the next labeler, never back to the skipper; a skipped
    assignment cannot be submitted, a submitted one cannot be skipped."""
    pid = add_project(db, items=1, overlap=1)
    ada = app_client(add_person(db, "ada@example.org", project=pid))
    bob = app_client(add_person(db, "bob@example.org", project=pid))
    a = next_assignment(ada, pid)
    assert next_assignment(bob, pid) is None  # the only slot is Ada's
    assert ada.post(f"/api/assignments/{a['id']}/skip").json()["skipped"] is True
    assert ada.post(f"/api/assignments/{a['id']}/skip").status_code == 200  # a repeat
    assert next_assignment(ada, pid) is None
    b = next_assignment(bob, pid)
    assert b is not None and b["prompt"] == a["prompt"]
    r = ada.post(f"/api/assignments/{a['id']}/submit", rank_payload())
    assert r.status_code == 409 and "skipped" in r.json()["detail"]
    assert bob.post(f"/api/assignments/{b['id']}/submit", rank_payload()).status_code == 200
    r = bob.post(f"/api/assignments/{b['id']}/skip")
    assert r.status_code == 409 and "already submitted" in r.json()["detail"]


def test_each_item_goes_to_overlap_labelers_and_gold_to_everyone(db, app_client):
    """Overlap 2, one ordinary and one gold item: the gold item comes first to every labeler
    and to the researcher; the ordinary one to two labelers only; researchers get gold only."""
    pid = add_project(db, items=1, gold=1, overlap=2)
    clients = [app_client(add_person(db, f"l{n}@example.org", project=pid)) for n in range(3)]
    res = app_client(add_person(db, "res@example.org", project=pid, role="researcher"))
    got = []
    for c in clients:
        first = next_assignment(c, pid)
        assert first["prompt"].startswith("Juliet")  # gold first
        assert c.post(f"/api/assignments/{first['id']}/submit", rank_payload()).status_code == 200
        second = next_assignment(c, pid)
        got.append(second)
        if second:
            assert (
                c.post(f"/api/assignments/{second['id']}/submit", rank_payload()).status_code == 200
            )
    assert [g is not None for g in got] == [True, True, False]
    r = next_assignment(res, pid)
    assert r["prompt"].startswith("Juliet")
    assert res.post(f"/api/assignments/{r['id']}/submit", rank_payload()).status_code == 200
    assert next_assignment(res, pid) is None
    page = clients[2].get(f"/projects/{pid}/label")
    assert page.status_code == 200 and "All done" in page.text


def test_progress_page_and_time_on_task_are_shown(db, app_client):
    pid = add_project(db, items=3)
    c = app_client(add_person(db, "ada@example.org", project=pid))
    r = c.get(f"/projects/{pid}/label")
    assert r.status_code == 303
    page = c.get(r.headers["location"])
    assert "Page 1 / 3" in page.text and 'id="timer"' in page.text
    aid = int(r.headers["location"].rsplit("/", 1)[1])
    c.post(f"/api/assignments/{aid}/submit", rank_payload())
    page = c.get(c.get(f"/projects/{pid}/label").headers["location"])
    assert "Page 2 / 3" in page.text


def test_model_outputs_are_escaped_in_the_page(db, app_client):
    with db.write() as s:
        p = lb.create_project(s, "x")
        row = lb.check_import_row(
            {
                "prompt": "<b>bold</b>",
                "completions": ["<script>alert(1)</script>", "<img src=x onerror=alert(2)>"],
            },
            "row 1",
            "rank",
        )
        lb.add_items(s, p, [row], gold=False, name="t")
        pid = p.id
    c = app_client(add_person(db, "ada@example.org", project=pid))
    page = c.get(c.get(f"/projects/{pid}/label").headers["location"]).text
    assert "<script>alert(1)</script>" not in page and "<img src=x" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;img src=x onerror=alert(2)&gt;" in page and "&lt;b&gt;bold&lt;/b&gt;" in page


def test_toxicity_and_demonstration_items(db, app_client):
    with db.write() as s:
        p = lb.create_project(s, "tox", task="toxicity")
        rows = [
            lb.check_import_row(
                {"prompt": "You fool,", "completions": ["kind sir."]}, "r1", "toxicity"
            ),
            lb.check_import_row({"prompt": "Write a kind greeting."}, "r2", "toxicity"),
        ]
        lb.add_items(s, p, rows, gold=False, name="t")
        pid = p.id
    c = app_client(add_person(db, "ada@example.org", project=pid))
    a = next_assignment(c, pid)
    assert a["kind"] == "toxicity"
    html = c.get(f"/assignments/{a['id']}").text
    assert "Relative toxicity" in html and "Continuity" in html
    bad = {
        "input_toxicity": 3,
        "outputs": [{"toxicity": 0, "relative_toxicity": 0, "continuity": 3}],
    }
    r = c.post(f"/api/assignments/{a['id']}/submit", bad)
    assert r.status_code == 422 and "input_toxicity: 3 is outside 0..2" in r.json()["detail"]
    bad = {
        "input_toxicity": 1,
        "outputs": [{"toxicity": 0, "relative_toxicity": 2, "continuity": 3}],
    }
    r = c.post(f"/api/assignments/{a['id']}/submit", bad)
    assert r.status_code == 422 and "relative_toxicity" in r.json()["detail"]
    good = {
        "input_toxicity": 2,
        "outputs": [{"toxicity": 0, "relative_toxicity": -1, "continuity": 3}],
    }
    assert c.post(f"/api/assignments/{a['id']}/submit", good).status_code == 200
    d = next_assignment(c, pid)
    assert d["kind"] == "demonstration" and d["outputs"] == []
    assert "Your reply" in c.get(f"/assignments/{d['id']}").text
    r = c.post(f"/api/assignments/{d['id']}/submit", {"demonstration": "   "})
    assert r.status_code == 422 and "empty" in r.json()["detail"]
    assert (
        c.post(
            f"/api/assignments/{d['id']}/submit", {"demonstration": "Good day, friend."}
        ).status_code
        == 200
    )
    with db.read() as s:
        labels = [a.label for a in s.scalars(select(Annotation).order_by(Annotation.id))]
    assert labels[0]["toxicity"] == [0] and labels[0]["input_toxicity"] == 2
    assert labels[1]["demonstration"] == "Good day, friend."


def test_self_assessment_is_asked_first(db, app_client):
    pid = add_project(db, items=1)
    c = app_client(add_person(db, "ada@example.org", project=pid, self_assessment=None))
    r = c.get(f"/projects/{pid}/label")
    assert r.headers["location"] == f"/projects/{pid}/self-assessment"
    assert "comfortable" in c.get(r.headers["location"]).text
    assert c.http.post(f"/projects/{pid}/self-assessment", data={"answer": "x"}).status_code == 403
    empty = c.http.post(
        f"/projects/{pid}/self-assessment", data={"answer": " ", "csrf_token": c.csrf}
    )
    assert empty.status_code == 422
    ok = c.http.post(
        f"/projects/{pid}/self-assessment", data={"answer": "Politics.", "csrf_token": c.csrf}
    )
    assert ok.status_code == 303
    assert c.get(f"/projects/{pid}/label").headers["location"].startswith("/assignments/")


# ---------------------------------------------------------------------------- researchers, admins


def test_dashboard_demonstration_ratings_and_settings(db, app_client):
    from rlfm.feedback.simulate import simulate

    pid = add_project(db, items=4, gold=2, overlap=2)
    with db.write() as s:
        lb.add_items(
            s,
            s.get(Project, pid),
            [lb.check_import_row({"prompt": "Greet me."}, "r", "rank")],
            gold=False,
            name="d",
        )
    res_id = add_person(db, "res@example.org", project=pid, role="researcher")
    ada_id = add_person(db, "ada@example.org", project=pid)
    simulate(db, "p", labelers=2, seed=1)
    ada = app_client(ada_id)
    for _ in range(10):  # Ada labels what is left for her, and writes the demonstration
        a = next_assignment(ada, pid)
        if a is None:
            break
        body = (
            {"demonstration": "Good day to you, friend."}
            if a["kind"] == "demonstration"
            else rank_payload()
        )
        assert ada.post(f"/api/assignments/{a['id']}/submit", body).status_code == 200
    res = app_client(res_id)
    page = res.get(f"/projects/{pid}/dashboard")
    assert page.status_code == 200 and "Fleiss" in page.text and "simulated-labeler-1" in page.text
    png = res.get(f"/projects/{pid}/dashboard/plot.png")
    assert png.status_code == 200 and png.content.startswith(b"\x89PNG")
    stats = res.get(f"/api/projects/{pid}/stats").json()
    assert stats["labelers"] == 3 and stats["agreement"] is not None
    demos = res.get(f"/projects/{pid}/demonstrations")
    assert "Good day to you, friend." in demos.text
    with db.read() as s:
        ann_id = s.scalar(select(Annotation.id).where(Annotation.kind == "demonstration"))
    url = f"/projects/{pid}/demonstrations/{ann_id}/rating"
    assert res.http.post(url, data={"score": "6"}).status_code == 403
    bad = res.http.post(url, data={"score": "8", "csrf_token": res.csrf})
    assert bad.status_code == 422 and "outside 1..7" in bad.text
    assert res.http.post(url, data={"score": "6", "csrf_token": res.csrf}).status_code == 303
    stats = res.get(f"/api/projects/{pid}/stats").json()
    assert [
        ls["demo_score"] for ls in stats["per_labeler"] if ls["email"] == "ada@example.org"
    ] == [6.0]
    r = res.http.post(
        f"/projects/{pid}/settings", data={"pass_threshold": "1.5", "csrf_token": res.csrf}
    )
    assert r.status_code == 422
    r = res.http.post(
        f"/projects/{pid}/settings", data={"pass_threshold": "0.9", "csrf_token": res.csrf}
    )
    assert r.status_code == 303
    with db.read() as s:
        assert s.get(Project, pid).pass_threshold == 0.9


def test_admin_invites_from_the_web(db, app_client):
    pid = add_project(db)
    admin = app_client(add_person(db, "root@example.org", admin=True))
    page = admin.get("/admin")
    assert page.status_code == 200 and "root@example.org" in page.text
    assert (
        admin.http.post(
            "/admin/invites",
            data={"email": "x@example.org", "role": "labeler", "project": str(pid)},
        ).status_code
        == 403
    )
    r = admin.http.post(
        "/admin/invites",
        data={
            "email": "new@example.org",
            "role": "labeler",
            "project": str(pid),
            "csrf_token": admin.csrf,
        },
    )
    assert r.status_code == 200
    link = re.search(r'<code id="invite-link">([^<]+)</code>', r.text).group(1)
    assert link.startswith("http://testserver/invite/")
    assert "new@example.org" in app_client().get(link.replace("http://testserver", "")).text
    bad = admin.http.post(
        "/admin/invites",
        data={"email": "nope", "role": "labeler", "project": str(pid), "csrf_token": admin.csrf},
    )
    assert bad.status_code == 422 and "not an email address" in bad.text


# ---------------------------------------------------------------------------- scoping


@pytest.fixture
def two_projects(db, app_client):
    """Ada labels project A, Bob labels project B (each has an open assignment), Rita
    researches A, Ray researches B."""
    pa, pb = add_project(db, "A", items=2), add_project(db, "B", items=2)
    ada = app_client(add_person(db, "ada@example.org", project=pa))
    bob = app_client(add_person(db, "bob@example.org", project=pb))
    rita = app_client(add_person(db, "rita@example.org", project=pa, role="researcher"))
    ray = app_client(add_person(db, "ray@example.org", project=pb, role="researcher"))
    a, b = next_assignment(ada, pa), next_assignment(bob, pb)
    return {
        "pa": pa,
        "pb": pb,
        "ada": ada,
        "bob": bob,
        "rita": rita,
        "ray": ray,
        "a": a["id"],
        "b": b["id"],
    }


def test_nobody_reaches_another_labelers_assignment(db, app_client, two_projects):
    """Every assignment endpoint answers 404 for someone else's assignment (another project's,
    or another labeler's in the same project), and nothing is changed."""
    t = two_projects
    ada, bob = t["ada"], t["bob"]
    carl = app_client(add_person(db, "carl@example.org", project=t["pa"]))  # also in A
    for intruder in (bob, carl):
        aid = t["a"]
        assert intruder.get(f"/assignments/{aid}").status_code == 404
        assert intruder.get(f"/api/assignments/{aid}").status_code == 404
        r = intruder.post(f"/api/assignments/{aid}/submit", rank_payload())
        assert r.status_code == 404 and r.json()["detail"] == f"assignment {aid} not found"
        assert intruder.post(f"/api/assignments/{aid}/skip").status_code == 404
    assert ada.get(f"/api/assignments/{t['b']}").status_code == 404
    assert count(db, Annotation) == 0
    with db.read() as s:
        assert s.get(Assignment, t["a"]).status == "open"


def test_nobody_reaches_another_projects_pages(db, two_projects):
    t = two_projects
    ada, pb = t["ada"], t["pb"]
    assert ada.post(f"/api/projects/{pb}/next").status_code == 404
    assert ada.get(f"/projects/{pb}/label").status_code == 404
    assert ada.get(f"/projects/{pb}/self-assessment").status_code == 404
    assert (
        ada.http.post(
            f"/projects/{pb}/self-assessment", data={"answer": "x", "csrf_token": ada.csrf}
        ).status_code
        == 404
    )
    assert ada.post("/api/projects/999/next").status_code == 404
    projects = ada.get("/projects").text
    assert ">A<" in projects and ">B<" not in projects


@pytest.mark.parametrize("who", ["ada", "ray"])
def test_researcher_pages_need_the_researcher_role_in_that_project(db, two_projects, who):
    """Project A's research pages answer 404 to A's labeler and to B's researcher alike."""
    t = two_projects
    c, pa = t[who], t["pa"]
    for url in (
        f"/projects/{pa}/dashboard",
        f"/projects/{pa}/dashboard/plot.png",
        f"/api/projects/{pa}/stats",
        f"/projects/{pa}/demonstrations",
    ):
        assert c.get(url).status_code == 404, url
    for url, data in (
        (f"/projects/{pa}/demonstrations/1/rating", {"score": "5"}),
        (f"/projects/{pa}/settings", {"pass_threshold": "0.1"}),
    ):
        assert c.http.post(url, data={**data, "csrf_token": c.csrf}).status_code == 404, url
    with db.read() as s:
        assert s.get(Project, pa).pass_threshold == 0.6
    assert t["rita"].get(f"/projects/{pa}/dashboard").status_code == 200
    assert t["rita"].get(f"/projects/{t['pb']}/dashboard").status_code == 404


def test_a_researcher_cannot_rate_another_projects_demonstration(db, two_projects):
    t = two_projects
    with db.write() as s:
        lb.add_items(
            s,
            s.get(Project, t["pb"]),
            [lb.check_import_row({"prompt": "Hi."}, "r", "rank")],
            gold=False,
            name="d",
        )
    bob = t["bob"]
    bob.post(f"/api/assignments/{t['b']}/submit", rank_payload())
    bob.post(f"/api/assignments/{next_assignment(bob, t['pb'])['id']}/submit", rank_payload())
    d = next_assignment(bob, t["pb"])
    assert (
        bob.post(
            f"/api/assignments/{d['id']}/submit", {"demonstration": "Hello there."}
        ).status_code
        == 200
    )
    with db.read() as s:
        ann_id = s.scalar(select(Annotation.id).where(Annotation.kind == "demonstration"))
    rita = t["rita"]
    for pid in (t["pa"], t["pb"]):
        r = rita.http.post(
            f"/projects/{pid}/demonstrations/{ann_id}/rating",
            data={"score": "7", "csrf_token": rita.csrf},
        )
        assert r.status_code == 404
    ray = t["ray"]
    r = ray.http.post(
        f"/projects/{t['pb']}/demonstrations/{ann_id}/rating",
        data={"score": "7", "csrf_token": ray.csrf},
    )
    assert r.status_code == 303


def test_admin_pages_need_an_admin(db, two_projects):
    for who in ("ada", "rita"):
        c = two_projects[who]
        assert c.get("/admin").status_code == 404
        r = c.http.post(
            "/admin/invites", data={"email": "x@example.org", "role": "admin", "csrf_token": c.csrf}
        )
        assert r.status_code == 404
    with db.read() as s:
        assert (
            s.scalar(
                select(func.count()).select_from(lb.User).where(lb.User.email == "x@example.org")
            )
            == 0
        )


@pytest.mark.parametrize(
    "url",
    ["/api/projects/{pa}/next", "/api/assignments/{a}/submit", "/api/assignments/{a}/skip"],
)
def test_state_changing_api_calls_need_the_csrf_token(db, two_projects, url):
    t = two_projects
    url = url.format(**t)
    ada = t["ada"]
    for headers in ({"X-CSRF-Token": ""}, {"X-CSRF-Token": "forged"}):
        r = ada.http.post(url, json=rank_payload(), headers=headers)
        assert r.status_code == 403 and "CSRF" in r.json()["detail"]
    r = ada.post(url, rank_payload(), headers={"Origin": "https://evil.example"})
    assert r.status_code == 403
    assert count(db, Annotation) == 0
    with db.read() as s:
        assert s.get(Assignment, t["a"]).status == "open"


def test_concurrent_labelers_never_exceed_the_overlap(db):
    """Eight labelers in threads take and submit work at once (each submission sent twice, as
    a double click): every item ends with exactly `overlap` labels, one per labeler, none lost
    and none stored twice."""
    import threading

    pid = add_project(db, items=10, overlap=3)
    uids = [add_person(db, f"l{n}@example.org", project=pid) for n in range(8)]
    errors: list[BaseException] = []
    stored: list[int] = []

    def work(uid: int) -> None:
        try:
            while True:
                with db.write() as s:
                    a = lb.next_assignment(s, s.get(Project, pid), s.get(lb.User, uid))
                    if a is None:
                        return
                    aid = a.id
                for _ in range(2):
                    with db.write() as s:
                        done = lb.submit(s, s.get(Assignment, aid), rank_payload())
                        if not done.duplicate:
                            stored.append(aid)
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(u,)) for u in uids]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(stored) == len(set(stored)) == 30  # 10 items × overlap 3
    with db.read() as s:
        per_item = s.execute(
            select(Annotation.item_id, func.count()).group_by(Annotation.item_id)
        ).all()
        pairs = s.execute(select(Annotation.item_id, Annotation.user_id)).all()
    assert sorted(n for _, n in per_item) == [3] * 10
    assert len(set(pairs)) == 30
