"""End to end in Debian's headless Chromium against ``rlfm label serve`` on 127.0.0.1: invite
link → password → log in, rank by dragging and by keyboard, rate, flag, skip, submit; the
export then holds exactly what was entered; model outputs with HTML stay text.

``RLFM_SCREENSHOT=docs/images/label-ranking.png`` also saves the ranking page's screenshot."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from sqlalchemy import select

from rlfm.feedback import auth
from rlfm.feedback import labels as lb
from rlfm.feedback.db import Annotation, Assignment, Project, open_db
from rlfm.feedback.export import export_labels

from .conftest import live_server

PASSWORD = "a long enough password"
PROMPT = (
    "Romeo.\nWhere is my gentle lady Juliet tonight? I have sought her in the orchard and the "
    "hall, and found her nowhere.\n\nNurse.\n"
)
REPLIES = [
    "Good my lord, I pray you, your lady Juliet sleeps in her chamber; she bade me tell you "
    "she will see you at the break of day.",
    "Away, thou knave! What business hast thou with my lady at this hour?",
    "She is gone.",
    "Sweet sir, I know not where she walks tonight, but I will seek her in the garden and "
    "bring you word, if it please you.",
]
XSS = ["<script>window.__pwned = 1</script>", '<img src=x onerror="window.__pwned = 2">']


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A database with a ranking project (2 items, ties allowed) and a project whose outputs
    are HTML; invites for one labeler; then the server."""
    path = tmp_path_factory.mktemp("browser") / "labels.db"
    db = open_db(path)
    links = {}
    with db.write() as s:
        p = lb.create_project(s, "Shakespeare replies", ties=True, overlap=1)
        rows = [
            lb.check_import_row({"id": "first", "prompt": PROMPT, "completions": REPLIES}, "r1", "rank"),
            lb.check_import_row({"id": "second", "prompt": "Nurse.\nMadam!\n\nJuliet.\n", "completions": REPLIES[:3]}, "r2", "rank"),
        ]  # fmt: skip
        lb.add_items(s, p, rows, gold=False, name="t")
        x = lb.create_project(s, "html")
        row = lb.check_import_row({"prompt": "<b>not bold</b>", "completions": XSS}, "r", "rank")
        lb.add_items(s, x, [row], gold=False, name="x")
        links["ada"] = auth.invite(s, "ada@example.org", project=p, role="labeler").path
        for proj in (p, x):  # Bob has a password already
            auth.invite(s, "bob@example.org", project=proj, role="labeler")
        bob = s.scalar(select(lb.User).where(lb.User.email == "bob@example.org"))
        bob.password_hash = auth._hasher.hash(PASSWORD)
        for m in s.scalars(select(lb.Membership).where(lb.Membership.user_id == bob.id)):
            m.self_assessment = "Any."
    db.close()
    with live_server(path) as srv:
        srv.links = links  # type: ignore[attr-defined]
        yield srv


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport={"width": 1360, "height": 1000})
    pg = context.new_page()
    pg.set_default_timeout(20_000)
    yield pg
    context.close()


def log_in(pg, server, email: str) -> None:
    pg.goto(server.url + "/login")
    pg.fill("input[name=email]", email)
    pg.fill("input[name=password]", PASSWORD)
    pg.click("main button[type=submit]")
    pg.wait_for_url("**/projects")


def texts_in_order(pg) -> list[str]:
    return pg.locator("li.output .output-text").all_text_contents()


def test_invite_password_login_rank_rate_flag_skip_submit_export(server, page):
    pg = page
    # invite link -> set the password -> logged in
    pg.goto(server.url + server.links["ada"])
    assert "ada@example.org" in pg.inner_text("main")
    pg.fill("input[name=password]", PASSWORD)
    pg.fill("input[name=password_again]", PASSWORD)
    pg.click("main button[type=submit]")
    pg.wait_for_url("**/projects")
    # log out, log in with the new password
    pg.click("nav button:has-text('Log out')")
    pg.wait_for_url("**/login")
    pg.fill("input[name=email]", "ada@example.org")
    pg.fill("input[name=password]", "not the password")
    pg.click("main button[type=submit]")
    assert "wrong email or password" in pg.inner_text("main")
    pg.fill("input[name=password]", PASSWORD)
    pg.click("main button[type=submit]")
    pg.wait_for_url("**/projects")
    # the first project: the self-assessment, then the ranking page
    pg.locator("section.project", has_text="Shakespeare replies").locator(
        "text=Start labelling"
    ).click()
    pg.wait_for_url("**/self-assessment")
    pg.fill("textarea[name=answer]", "Religion, politics, and LGBTQ+ topics in Europe.")
    pg.click("main button[type=submit]")
    pg.wait_for_url("**/assignments/*")
    assert "Page 1 / 2" in pg.inner_text("#page")
    assert pg.locator("footer.shortcuts").inner_text().startswith("↑↓ select")
    start = texts_in_order(pg)
    assert sorted(start) == sorted(REPLIES)

    # drag the card with the best reply to the top
    best = pg.locator("li.output", has_text=REPLIES[0])
    best.drag_to(pg.locator("li.output").first, target_position={"x": 40, "y": 8})
    assert texts_in_order(pg)[0] == REPLIES[0]
    # keyboard alone: select the rude reply and move it to the bottom
    rude = pg.locator("li.output", has_text=REPLIES[1])
    rude.focus()
    for _ in range(4):
        pg.keyboard.press("Shift+ArrowDown")
    assert texts_in_order(pg)[-1] == REPLIES[1]
    # the two middle ones: "Sweet sir" second, "She is gone." third, by keyboard
    sweet = pg.locator("li.output", has_text=REPLIES[3])
    sweet.focus()
    while texts_in_order(pg).index(REPLIES[3]) > 1:
        pg.keyboard.press("Shift+ArrowUp")
    while texts_in_order(pg).index(REPLIES[3]) < 1:
        pg.keyboard.press("Shift+ArrowDown")
    order = texts_in_order(pg)
    assert order == [REPLIES[0], REPLIES[3], REPLIES[2], REPLIES[1]]
    # rate: the first by mouse, the rest by keyboard (ArrowDown selects the next card)
    pg.locator("li.output").nth(0).locator("button.rate[data-rating='7']").click()
    pg.locator("li.output").nth(1).focus()
    pg.keyboard.press("6")
    pg.keyboard.press("ArrowDown")
    pg.keyboard.press("3")
    pg.keyboard.press("ArrowDown")
    pg.keyboard.press("1")
    # flag the rude reply: open its questions with F, tick "inappropriate"
    pg.keyboard.press("f")
    rude.locator("input[data-flag=inappropriate]").check()
    assert rude.locator(".flag-count").inner_text() == "1 yes"
    pg.fill("#notes", "The last one is rude.")
    if os.environ.get("RLFM_SCREENSHOT"):
        pg.locator("li.output").nth(0).focus()
        pg.mouse.move(5, 300)  # no hover effects in the picture
        pg.wait_for_timeout(1500)
        pg.screenshot(path=os.environ["RLFM_SCREENSHOT"])
    pg.wait_for_timeout(1100)  # a second on the clock
    first_url = pg.url
    pg.keyboard.press("Control+Enter")
    pg.wait_for_url(lambda url: url != first_url and "/assignments/" in url)
    assert "Page 2 / 2" in pg.inner_text("#page")
    # skip the second item
    pg.keyboard.press("Shift+S")
    pg.wait_for_url("**/label")
    assert "All done" in pg.inner_text("main")

    db = open_db(server.db_path, create=False)
    try:
        out = server.db_path.parent / "prefs.jsonl"
        export_labels(db, "Shakespeare replies", out)
        rows = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
        assert len(rows) == 1
        row = rows[0]
        assert row["completions"] == REPLIES and row["prompt"] == PROMPT
        assert row["ranking"] == [REPLIES.index(t) for t in order] == [0, 3, 2, 1]
        with db.read() as s:
            project = s.scalar(select(Project).where(Project.name == "Shakespeare replies"))
            ann = s.scalar(select(Annotation).where(Annotation.project_id == project.id))
            statuses = sorted(
                s.scalars(select(Assignment.status).where(Assignment.project_id == project.id))
            )
        assert ann.label["ratings"] == [7, 1, 3, 6]  # in the imported order
        flagged = [f["inappropriate"] for f in ann.label["flags"]]
        assert flagged == [False, True, False, False]
        assert sum(v for f in ann.label["flags"] for v in f.values()) == 1
        assert ann.label["notes"] == "The last one is rude."
        assert ann.client_ms >= 1000
        assert statuses == ["skipped", "submitted"]
    finally:
        db.close()


def test_model_outputs_with_html_are_shown_as_text_and_never_run(server, page):
    pg = page
    log_in(pg, server, "bob@example.org")
    pg.locator("section.project", has_text="html").locator("text=Start labelling").click()
    pg.wait_for_url("**/assignments/*")
    assert sorted(texts_in_order(pg)) == sorted(XSS)
    assert pg.inner_text("#prompt") == "<b>not bold</b>"
    assert pg.locator("#prompt b").count() == 0
    assert pg.locator("li.output img").count() == 0
    assert pg.locator("li.output script").count() == 0
    pg.wait_for_timeout(300)
    assert pg.evaluate("window.__pwned === undefined")


def test_ties_by_keyboard(server, page, tmp_path: Path):
    """The second project allows ties: T ties the selected output with the one above; the
    stored ranking has them in one group."""
    db = open_db(server.db_path, create=False)
    try:
        with db.write() as s:
            p = lb.create_project(s, "ties", ties=True, overlap=1)
            row = lb.check_import_row({"prompt": "Hi.", "completions": REPLIES[:3]}, "r", "rank")
            lb.add_items(s, p, [row], gold=False, name="t")
            user = s.scalar(select(lb.User).where(lb.User.email == "bob@example.org"))
            s.add(
                lb.Membership(project_id=p.id, user_id=user.id, role="labeler", self_assessment="x")
            )
            pid = p.id
    finally:
        db.close()
    pg = page
    log_in(pg, server, "bob@example.org")
    pg.goto(f"{server.url}/projects/{pid}/label")
    pg.wait_for_url("**/assignments/*")
    order = texts_in_order(pg)
    for n in range(3):
        pg.locator("li.output").nth(n).focus()
        pg.keyboard.press(str(5 - n))
    pg.locator("li.output").nth(1).focus()
    pg.keyboard.press("t")
    assert pg.locator("li.output").nth(1).locator(".rank-no").inner_text() == "1"
    assert pg.locator("li.output").nth(2).locator(".rank-no").inner_text() == "2"
    pg.click("#submit")
    pg.wait_for_url("**/label")
    db = open_db(server.db_path, create=False)
    try:
        with db.read() as s:
            ann = s.scalar(select(Annotation).where(Annotation.project_id == pid))
        first = sorted(REPLIES.index(t) for t in order[:2])
        assert [sorted(ann.label["ranking"][0]), ann.label["ranking"][1]] == [
            first,
            REPLIES.index(order[2]),
        ]
    finally:
        db.close()
