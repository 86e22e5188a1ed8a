"""Human feedback: the labelling web app, its database, agreement statistics and export.

People rank a model's outputs (or rate their toxicity, or write demonstrations) in a browser;
the labels go to the reward stage in its ranking format. The package talks to the rest of rlfm
only through that format (``data/preferences.py``) and the built-in simulated labelers
(``data/labelers.py``).

Layout (each module's docstring says more):

    db.py          tables (SQLAlchemy 2), connecting (SQLite WAL, any URL), transactions,
                   Alembic migrations applied on open (migrations/versions/)
    auth.py        invites, Argon2 passwords, database sessions, login rate limiting
    labels.py      projects, import checks, assignments (overlap, gold, shuffled order), the
                   validation and storage of a submission: the one path every label takes
    agreement.py   pure math: pairwise agreement, Cohen's/Fleiss' κ, Krippendorff's α,
                   Kendall's τ, ranked pairs, Bradley–Terry
    stats.py       those statistics per project, labeler and item; labeler screening
    export.py      rankings / pairs / demonstrations / toxicity files (no server needed)
    simulate.py    the built-in simulated labelers, through labels.submit
    app.py         the FastAPI app: pages, JSON API, security headers, CSRF, scoping
    templates/     Jinja2 pages (autoescaped); static/ the CSS and the one script
    commands/      the `rlfm label ...` commands, one module each

In-process use (what the pipeline calls)::

    db = open_db("runs/labels.db")
    with db.write() as s:
        labels.create_project(s, "rm", k=4, overlap=3)
    labels.import_rows(db, "rm", rows)               # {"prompt", "completions"} dicts
    simulate(db, "rm", labelers=3, seed=0)
    export_labels(db, "rm", "runs/prefs.jsonl")      # what `rlfm reward train --data` reads
"""
