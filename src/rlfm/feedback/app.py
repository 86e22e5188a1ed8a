"""The labelling web app: FastAPI, server-rendered Jinja2 pages, plain JS in static files.

Pages (HTML) and API (JSON under ``/api``); every route below checks who asks:

    GET  /login, POST /login, POST /logout          sessions (rate-limited logins)
    GET  /invite/{token}, POST /invite/{token}      set a password with a one-time invite
    GET  /projects                                  the projects one is a member of
    GET  /projects/{pid}/label                      the next assignment (redirect), or "done"
    GET  /assignments/{aid}                         the labelling page (rank, toxicity, demo)
    GET  /api/assignments/{aid}                     an assignment as JSON (shown order)
    POST /api/projects/{pid}/next                   the next assignment as JSON
    POST /api/assignments/{aid}/submit              store a label (labels.submit)
    POST /api/assignments/{aid}/skip                skip
    GET  /projects/{pid}/self-assessment, POST      the screening question
    GET  /projects/{pid}/dashboard                  researchers: agreement, screening, plot
    GET  /projects/{pid}/dashboard/plot.png
    GET  /api/projects/{pid}/stats                  researchers: the same figures as JSON
    GET  /projects/{pid}/demonstrations             researchers: rate demonstrations 1-7
    POST /projects/{pid}/demonstrations/{id}/rating
    POST /projects/{pid}/settings                   researchers: the screening threshold
    GET  /admin, POST /admin/invites                admins: people, projects, invites
    GET  /healthz

**Scoping**: an assignment is looked up by id *and* owner, a project by id *and* the asker's
membership (researcher-only pages also by role); anything else answers 404, the same as an id
that does not exist, so ids cannot be probed.

**Security**: the session cookie ``rlfm_session`` is HttpOnly, SameSite=Strict, and Secure
whenever the request came over HTTPS (``rlfm label serve`` refuses plain HTTP on a non-loopback
address unless told it sits behind a TLS proxy); every POST needs the session's CSRF token (form
field ``csrf_token`` or header ``X-CSRF-Token``; before login a double-submit cookie) and a
same-origin ``Origin`` header when the browser sends one; responses carry a CSP without inline
script (``script-src 'self'``), ``X-Frame-Options: DENY``, ``nosniff``, ``Referrer-Policy:
same-origin`` (an invite token never leaks to another site in a Referer) and ``Cache-Control: no-store``. Model
outputs are rendered through Jinja2's autoescaping and set with ``textContent`` in scripts.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader, select_autoescape
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException

from rlfm.feedback import auth
from rlfm.feedback import labels as lb
from rlfm.feedback.db import (
    Annotation,
    Assignment,
    Database,
    DemoRating,
    Item,
    LabelError,
    LoginSession,
    Membership,
    Project,
    User,
)
from rlfm.feedback.stats import ProjectStats, fmt, project_stats

HERE = Path(__file__).parent
SESSION_COOKIE = "rlfm_session"
PRE_CSRF_COOKIE = "rlfm_csrf"
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
MAX_BODY = 1_000_000


class Redirect(Exception):
    """Raised by a page to send the browser elsewhere (e.g. to the login page)."""

    def __init__(self, url: str) -> None:
        self.url = url


class SecurityHeaders:
    """ASGI middleware: the security headers on every response (module docstring); a request
    whose Content-Length exceeds MAX_BODY is answered 413 before it is read."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > MAX_BODY:
            response = JSONResponse({"detail": "request too large"}, status_code=413)
            await response(scope, receive, send)
            return
        https = scope.get("scheme") == "https"
        static = scope["path"].startswith("/static/")

        async def send_with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                h = MutableHeaders(scope=message)
                h["Content-Security-Policy"] = CSP
                h["X-Content-Type-Options"] = "nosniff"
                h["X-Frame-Options"] = "DENY"
                h["Referrer-Policy"] = "same-origin"
                h["Cross-Origin-Opener-Policy"] = "same-origin"
                h["Permissions-Policy"] = "camera=(), microphone=(), geolocation=()"
                if not static:
                    h["Cache-Control"] = "no-store"
                if https:
                    h["Strict-Transport-Security"] = "max-age=31536000"
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _templates() -> Environment:
    env = Environment(
        loader=FileSystemLoader(HERE / "templates"),
        autoescape=select_autoescape(["html"], default_for_string=True),
    )
    env.globals["fmt"] = fmt
    env.globals["FLAGS"] = lb.FLAGS
    return env


def create_app(db: Database) -> FastAPI:
    """The app, serving ``db``. Run it with uvicorn (``rlfm label serve``) or a test client."""
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(SecurityHeaders)
    app.state.db = db
    env = _templates()
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")

    # ------------------------------------------------------------------ plumbing

    def page(
        request: Request, name: str, status: int = 200, csrf: str | None = None, **ctx: Any
    ) -> HTMLResponse:
        html = env.get_template(name).render(request=request, csrf=csrf, **ctx)
        return HTMLResponse(html, status_code=status)

    def is_api(request: Request) -> bool:
        return request.url.path.startswith("/api/")

    @app.exception_handler(LabelError)
    async def label_error(request: Request, exc: LabelError) -> Response:
        if is_api(request):
            return JSONResponse({"detail": str(exc)}, status_code=exc.status)
        return page(request, "error.html", exc.status, message=str(exc), user=None)

    @app.exception_handler(Redirect)
    async def redirect(request: Request, exc: Redirect) -> Response:
        return RedirectResponse(exc.url, status_code=303)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        message = "page not found" if exc.status_code == 404 else str(exc.detail)
        if is_api(request):
            return JSONResponse({"detail": message}, status_code=exc.status_code)
        return page(request, "error.html", exc.status_code, message=message, user=None)

    def who(s: Session, request: Request) -> tuple[User, LoginSession]:
        found = auth.session_user(s, request.cookies.get(SESSION_COOKIE))
        if found is None:
            if is_api(request) or request.method != "GET":
                raise LabelError("not logged in", 401)
            raise Redirect("/login")
        return found

    def check_origin(request: Request) -> None:
        origin = request.headers.get("origin")
        if origin is None:  # not sent (same-origin GET-style navigation, non-browser clients)
            return
        host = request.headers.get("host", "")
        own = f"{request.url.scheme}://{host}"
        if origin != own and urlsplit(origin).netloc != host:
            raise LabelError("cross-site request refused (Origin does not match)", 403)

    def check_csrf(request: Request, login: LoginSession, form: dict | None = None) -> None:
        check_origin(request)
        token = request.headers.get("x-csrf-token") or (form or {}).get("csrf_token") or ""
        if not auth.same_secret(str(token), login.csrf_token):
            raise LabelError("missing or wrong CSRF token; reload the page and try again", 403)

    def pre_csrf(request: Request, form: dict) -> None:
        check_origin(request)
        cookie = request.cookies.get(PRE_CSRF_COOKIE) or ""
        token = str(form.get("csrf_token") or "")
        if not cookie or not auth.same_secret(cookie, token):
            raise LabelError("missing or wrong CSRF token; reload the page and try again", 403)

    def set_cookie(request: Request, response: Response, name: str, value: str, age: int) -> None:
        response.set_cookie(
            name,
            value,
            max_age=age,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
            path="/",
        )

    async def form_of(request: Request) -> dict[str, str]:
        try:
            form = await request.form()
        except Exception:
            raise LabelError("could not read the form", 400) from None
        return {k: v for k, v in form.items() if isinstance(v, str)}

    async def json_of(request: Request) -> Any:
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY:
                raise LabelError(f"request too large (more than {MAX_BODY} bytes)", 413)
        if not body:
            return {}
        try:
            return json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise LabelError(f"the request body is not valid JSON ({e})", 400) from None

    def client_ip(request: Request) -> str:
        return request.client.host if request.client else "unknown"

    def pre_token(request: Request) -> str:
        return request.cookies.get(PRE_CSRF_COOKIE) or auth.new_token()

    def anonymous_page(request: Request, name: str, status: int = 200, **ctx: Any) -> Response:
        token = pre_token(request)
        response = page(request, name, status, csrf=token, user=None, **ctx)
        set_cookie(request, response, PRE_CSRF_COOKIE, token, 3600)
        return response

    # ------------------------------------------------------------------ sessions

    @app.get("/healthz")
    def healthz() -> dict:
        with db.read() as s:
            s.execute(select(1))
        return {"ok": True}

    @app.get("/")
    def root(request: Request) -> Response:
        with db.read() as s:
            found = auth.session_user(s, request.cookies.get(SESSION_COOKIE))
        return RedirectResponse("/projects" if found else "/login", status_code=303)

    @app.get("/login")
    def login_page(request: Request) -> Response:
        return anonymous_page(request, "login.html", error=None, email="")

    @app.post("/login")
    async def login(request: Request) -> Response:
        form = await form_of(request)
        pre_csrf(request, form)
        email, password = form.get("email", ""), form.get("password", "")

        def work() -> tuple[str | None, str | None]:
            with db.write() as s:
                user = auth.login(s, email, password, client_ip(request))
                if user is None:
                    return None, None
                token, _ = auth.start_session(s, user)
                return token, "/projects"

        try:
            token, target = await run_in_threadpool(work)
        except LabelError as e:
            return anonymous_page(request, "login.html", e.status, error=str(e), email=email)
        if token is None:
            return anonymous_page(
                request, "login.html", 401, error="wrong email or password", email=email
            )
        response = RedirectResponse(target or "/projects", status_code=303)
        set_cookie(request, response, SESSION_COOKIE, token, auth.SESSION_HOURS * 3600)
        response.delete_cookie(PRE_CSRF_COOKIE, path="/")
        return response

    @app.post("/logout")
    async def logout(request: Request) -> Response:
        form = await form_of(request)

        def work() -> None:
            with db.write() as s:
                _, login_row = who(s, request)
                check_csrf(request, login_row, form)
                auth.end_session(s, request.cookies.get(SESSION_COOKIE))

        await run_in_threadpool(work)
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    @app.get("/invite/{token}")
    def invite_page(request: Request, token: str) -> Response:
        with db.read() as s:
            _, user = auth.invite_user(s, token)
            email = user.email
        return anonymous_page(request, "invite.html", email=email, token=token, error=None)

    @app.post("/invite/{token}")
    async def invite_accept(request: Request, token: str) -> Response:
        form = await form_of(request)
        pre_csrf(request, form)
        password, again = form.get("password", ""), form.get("password_again", "")

        def work() -> str:
            with db.write() as s:
                _, user = auth.invite_user(s, token)
                if password != again:
                    raise LabelError("the two passwords differ", 422)
                auth.accept_invite(s, token, password)
                session_token, _ = auth.start_session(s, user)
                return session_token

        try:
            session_token = await run_in_threadpool(work)
        except LabelError as e:
            if e.status == 404:
                raise
            with db.read() as s:
                _, user = auth.invite_user(s, token)
                email = user.email
            return anonymous_page(
                request, "invite.html", e.status, email=email, token=token, error=str(e)
            )
        response = RedirectResponse("/projects", status_code=303)
        set_cookie(request, response, SESSION_COOKIE, session_token, auth.SESSION_HOURS * 3600)
        response.delete_cookie(PRE_CSRF_COOKIE, path="/")
        return response

    # ------------------------------------------------------------------ labelling

    @app.get("/projects")
    def projects(request: Request) -> Response:
        with db.read() as s:
            user, login_row = who(s, request)
            q = select(Project, Membership.role).outerjoin(
                Membership, (Membership.project_id == Project.id) & (Membership.user_id == user.id)
            )
            if not user.is_admin:
                q = q.where(Membership.user_id == user.id)
            rows = []
            for project, role in s.execute(q.order_by(Project.name)).all():
                prog = lb.progress(s, project, user) if role in ("labeler", "researcher") else None
                rows.append((project, role or "admin", prog))
        return page(request, "projects.html", csrf=login_row.csrf_token, user=user, rows=rows)

    @app.get("/projects/{pid}/label")
    def label_next(request: Request, pid: int) -> Response:
        with db.write() as s:
            user, login_row = who(s, request)
            project = lb.project_for(s, pid, user, "labeler", "researcher")
            member = lb.membership(s, pid, user.id)
            assert member is not None
            if member.role == "labeler" and not member.self_assessment:
                return RedirectResponse(f"/projects/{pid}/self-assessment", status_code=303)
            a = lb.next_assignment(s, project, user)
            if a is not None:
                return RedirectResponse(f"/assignments/{a.id}", status_code=303)
            prog = lb.progress(s, project, user)
        return page(
            request,
            "done.html",
            csrf=login_row.csrf_token,
            user=user,
            project=project,
            progress=prog,
        )

    def shown(item: Item, a: Assignment) -> list[dict[str, Any]]:
        return [
            {
                "position": p,
                "letter": chr(ord("A") + p) if p < 26 else str(p + 1),
                "text": item.completions[i],
            }
            for p, i in enumerate(a.permutation)
        ]

    @app.get("/assignments/{aid}")
    def assignment_page(request: Request, aid: int) -> Response:
        with db.read() as s:
            user, login_row = who(s, request)
            a = lb.assignment_for(s, aid, user)
            if a.status != "open":
                return RedirectResponse(f"/projects/{a.project_id}/label", status_code=303)
            project = s.get(Project, a.project_id)
            item = s.get(Item, a.item_id)
            assert project is not None and item is not None
            prog = lb.progress(s, project, user)
        return page(
            request,
            f"{item.kind}.html",
            csrf=login_row.csrf_token,
            user=user,
            project=project,
            item=item,
            assignment=a,
            outputs=shown(item, a),
            progress=prog,
        )

    def assignment_json(s: Session, a: Assignment) -> dict[str, Any]:
        item = s.get(Item, a.item_id)
        project = s.get(Project, a.project_id)
        assert item is not None and project is not None
        return {
            "id": a.id,
            "project": project.id,
            "kind": item.kind,
            "status": a.status,
            "ties": project.ties,
            "prompt": item.prompt,
            "outputs": [item.completions[i] for i in a.permutation],
            "flags": list(lb.FLAG_NAMES),
        }

    @app.get("/api/assignments/{aid}")
    def assignment_api(request: Request, aid: int) -> dict:
        with db.read() as s:
            user, _ = who(s, request)
            return assignment_json(s, lb.assignment_for(s, aid, user))

    @app.post("/api/projects/{pid}/next")
    def next_api(request: Request, pid: int) -> dict:
        with db.write() as s:
            user, login_row = who(s, request)
            check_csrf(request, login_row)
            project = lb.project_for(s, pid, user, "labeler", "researcher")
            a = lb.next_assignment(s, project, user)
            return {"assignment": assignment_json(s, a) if a is not None else None}

    @app.post("/api/assignments/{aid}/submit")
    async def submit_api(request: Request, aid: int) -> Response:
        payload = await json_of(request)

        def work() -> dict:
            with db.write() as s:
                user, login_row = who(s, request)
                check_csrf(request, login_row)
                a = lb.assignment_for(s, aid, user)
                done = lb.submit(s, a, payload)
                return {
                    "stored": True,
                    "duplicate": done.duplicate,
                    "annotation": done.annotation.id,
                    "next": f"/projects/{a.project_id}/label",
                }

        return JSONResponse(await run_in_threadpool(work))

    @app.post("/api/assignments/{aid}/skip")
    def skip_api(request: Request, aid: int) -> dict:
        with db.write() as s:
            user, login_row = who(s, request)
            check_csrf(request, login_row)
            a = lb.assignment_for(s, aid, user)
            lb.skip(s, a)
            return {"skipped": True, "next": f"/projects/{a.project_id}/label"}

    @app.get("/projects/{pid}/self-assessment")
    def self_assessment_page(request: Request, pid: int) -> Response:
        with db.read() as s:
            user, login_row = who(s, request)
            project = lb.project_for(s, pid, user, "labeler", "researcher")
            member = lb.membership(s, pid, user.id)
            answer = member.self_assessment if member else ""
        return page(
            request,
            "self_assessment.html",
            csrf=login_row.csrf_token,
            user=user,
            project=project,
            answer=answer or "",
            error=None,
        )

    @app.post("/projects/{pid}/self-assessment")
    async def self_assessment(request: Request, pid: int) -> Response:
        form = await form_of(request)

        def work() -> None:
            with db.write() as s:
                user, login_row = who(s, request)
                check_csrf(request, login_row, form)
                project = lb.project_for(s, pid, user, "labeler", "researcher")
                lb.set_self_assessment(s, project, user, form.get("answer", ""))

        await run_in_threadpool(work)
        return RedirectResponse(f"/projects/{pid}/label", status_code=303)

    # ------------------------------------------------------------------ researchers

    def researcher_project(
        s: Session, request: Request, pid: int
    ) -> tuple[User, LoginSession, Project]:
        user, login_row = who(s, request)
        project = lb.project_for(s, pid, user, "researcher", "admin")
        return user, login_row, project

    @app.get("/projects/{pid}/dashboard")
    def dashboard(request: Request, pid: int) -> Response:
        with db.read() as s:
            user, login_row, project = researcher_project(s, request, pid)
            st = project_stats(s, project)
        return page(
            request,
            "dashboard.html",
            csrf=login_row.csrf_token,
            user=user,
            project=project,
            stats=st,
        )

    @app.get("/projects/{pid}/dashboard/plot.png")
    def dashboard_plot(request: Request, pid: int) -> Response:
        with db.read() as s:
            _, _, project = researcher_project(s, request, pid)
            st = project_stats(s, project)
        return Response(agreement_plot(st), media_type="image/png")

    @app.get("/api/projects/{pid}/stats")
    def stats_api(request: Request, pid: int) -> dict:
        import dataclasses

        with db.read() as s:
            _, _, project = researcher_project(s, request, pid)
            return dataclasses.asdict(project_stats(s, project))

    @app.get("/projects/{pid}/demonstrations")
    def demonstrations(request: Request, pid: int) -> Response:
        with db.read() as s:
            user, login_row, project = researcher_project(s, request, pid)
            rows = s.execute(
                select(Annotation, Item, User)
                .join(Item, Item.id == Annotation.item_id)
                .join(User, User.id == Annotation.user_id)
                .where(Annotation.project_id == pid, Annotation.kind == "demonstration")
                .order_by(Annotation.id)
            ).all()
            mine = dict(
                s.execute(
                    select(DemoRating.annotation_id, DemoRating.score).where(
                        DemoRating.rater_id == user.id
                    )
                ).all()
            )
        return page(
            request,
            "demonstrations.html",
            csrf=login_row.csrf_token,
            user=user,
            project=project,
            rows=rows,
            mine=mine,
        )

    @app.post("/projects/{pid}/demonstrations/{ann_id}/rating")
    async def rate(request: Request, pid: int, ann_id: int) -> Response:
        form = await form_of(request)

        def work() -> None:
            with db.write() as s:
                user, login_row, project = researcher_project(s, request, pid)
                check_csrf(request, login_row, form)
                score = form.get("score", "")
                lb.rate_demonstration(
                    s, project, user, ann_id, int(score) if score.isdigit() else score
                )

        await run_in_threadpool(work)
        return RedirectResponse(f"/projects/{pid}/demonstrations", status_code=303)

    @app.post("/projects/{pid}/settings")
    async def settings(request: Request, pid: int) -> Response:
        form = await form_of(request)

        def work() -> None:
            with db.write() as s:
                _, login_row, project = researcher_project(s, request, pid)
                check_csrf(request, login_row, form)
                try:
                    value = float(form.get("pass_threshold", ""))
                except ValueError:
                    raise LabelError("pass_threshold: expected a number from 0 to 1", 422) from None
                if not 0 <= value <= 1:
                    raise LabelError(f"pass_threshold: {value} is outside 0..1", 422)
                project.pass_threshold = value

        await run_in_threadpool(work)
        return RedirectResponse(f"/projects/{pid}/dashboard", status_code=303)

    # ------------------------------------------------------------------ admins

    def admin_of(s: Session, request: Request) -> tuple[User, LoginSession]:
        user, login_row = who(s, request)
        if not user.is_admin:
            raise LabelError("page not found", 404)
        return user, login_row

    def admin_page(request: Request, status: int = 200, **ctx: Any) -> Response:
        with db.read() as s:
            user, login_row = admin_of(s, request)
            users = s.scalars(select(User).order_by(User.email)).all()
            members = s.execute(
                select(Membership.user_id, Project.name, Membership.role).join(
                    Project, Project.id == Membership.project_id
                )
            ).all()
            projects_ = s.scalars(select(Project).order_by(Project.name)).all()
        roles: dict[int, list[str]] = {}
        for uid, name, role in members:
            roles.setdefault(uid, []).append(f"{role} of {name}")
        ctx.setdefault("link", None)
        ctx.setdefault("error", None)
        return page(
            request,
            "admin.html",
            status,
            csrf=login_row.csrf_token,
            user=user,
            users=users,
            roles=roles,
            projects=projects_,
            **ctx,
        )

    @app.get("/admin")
    def admin(request: Request) -> Response:
        return admin_page(request)

    @app.post("/admin/invites")
    async def admin_invite(request: Request) -> Response:
        form = await form_of(request)

        def work() -> str | None:
            with db.write() as s:
                _, login_row = admin_of(s, request)
                check_csrf(request, login_row, form)
                role = form.get("role", "")
                if role == "admin":
                    link = auth.invite(s, form.get("email", ""), admin=True)
                else:
                    pid = form.get("project", "")
                    project = s.get(Project, int(pid)) if pid.isdigit() else None
                    if project is None:
                        raise LabelError("choose the project they join", 422)
                    link = auth.invite(s, form.get("email", ""), project=project, role=role)
                return link.path if link else None

        try:
            path = await run_in_threadpool(work)
        except LabelError as e:
            if e.status in (401, 403, 404):
                raise
            return await run_in_threadpool(admin_page, request, e.status, error=str(e))
        link = str(request.base_url).rstrip("/") + path if path else ""
        note = None if path else "they have an account already: the role was added"
        return await run_in_threadpool(admin_page, request, 200, link=link, note=note)

    return app


# ---------------------------------------------------------------------------- the plot


def agreement_plot(st: ProjectStats) -> bytes:
    """A PNG bar chart: each labeler's agreement with the others and with the gold set, the
    pass threshold as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [ls.email.split("@")[0] for ls in st.per_labeler]
    peer = [ls.agreement or 0.0 for ls in st.per_labeler]
    gold = [ls.gold_ranking or 0.0 for ls in st.per_labeler]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(names) + 2), 3.2), dpi=100)
    x = list(range(len(names)))
    ax.bar(
        [i - 0.2 for i in x],
        peer,
        width=0.4,
        label="agreement with other labelers",
        color="#4c6ef5",
    )
    ax.bar([i + 0.2 for i in x], gold, width=0.4, label="agreement with gold", color="#12b886")
    ax.axhline(
        st.pass_threshold, color="#e8590c", linestyle="--", linewidth=1, label="pass threshold"
    )
    ax.set_xticks(x, names, rotation=20, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("share of output pairs")
    ax.legend(fontsize=7, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
