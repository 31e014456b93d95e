"""Data-to-text loaders: real files in the shared data folder when present, small malformed files in
tmp_path for the error paths, and downloads against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import functools
import os
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from lorakit.data import (
    DataFormatError,
    DataRootError,
    DownloadError,
    Example,
    count_references,
    data_root,
    download_dart,
    download_e2e,
    download_webnlg,
    linearize_e2e,
    linearize_triples,
    load_dart,
    load_e2e,
    load_nlg,
    load_webnlg,
    parse_mr,
    read_dart_json,
    read_e2e_csv,
    read_webnlg_xml,
    training_pairs,
)
from lorakit.data.webnlg import webnlg_manifest

REPO = Path(__file__).resolve().parents[1]
VAULTS_MR = (
    "name[The Vaults], eatType[pub], priceRange[more than £30], customer rating[5 out of 5], near[Café Adriatic]"
)


def _real_root() -> Path | None:
    env = os.environ.get("LORAKIT_DATA")
    root = Path(env) if env else REPO.parent / "shared" / "data"
    return root if root.is_dir() else None


REAL_ROOT = _real_root()


def _real(*parts: str) -> Path:
    """The real data root, or skip when the file the test needs is not there."""
    if REAL_ROOT is None:
        pytest.skip("real data not found: set LORAKIT_DATA or provide <repo>/../shared/data")
    if not REAL_ROOT.joinpath(*parts).exists():
        pytest.skip(f"{REAL_ROOT.joinpath(*parts)} not present")
    return REAL_ROOT


def _write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding=encoding, newline="")
    return path


WEBNLG_XML = """<?xml version="1.0" ?>
<benchmark>
  <entries>
    <entry category="Airport" eid="Id1" size="1">
      <originaltripleset>
        <otriple>Aarhus | leaderName | Jacob_Bundsgaard</otriple>
      </originaltripleset>
      <modifiedtripleset>
        <mtriple>Aarhus | leaderName | Jacob_Bundsgaard</mtriple>
      </modifiedtripleset>
      <lex comment="good" lid="Id1">The leader of Aarhus is Jacob Bundsgaard.</lex>
      <lex comment="toFix" lid="Id2">Aarhus leader Jacob Bundsgaard.</lex>
    </entry>
    <entry category="Athlete" eid="Id2" size="2">
      <modifiedtripleset>
        <mtriple>Aaron_Boogaard | birthYear | 1986</mtriple>
        <mtriple>Aaron_Boogaard | club | Wichita_Thunder</mtriple>
      </modifiedtripleset>
      <lex comment="good" lid="Id1">Aaron Boogaard, born in 1986, played for Wichita Thunder.</lex>
    </entry>
  </entries>
</benchmark>
"""

DART_JSON = """[
  {"tripleset": [["Mars Hill College", "JOINED", "1973"], ["Mars Hill College", "LOCATION", "Mars Hill"]],
   "subtree_was_extended": true,
   "annotations": [{"source": "WikiSQL_decl_sents", "text": "A school from Mars Hill joined in 1973."},
                   {"source": "WikiSQL_decl_sents", "text": "Mars Hill College joined in 1973."}]},
  {"tripleset": [["Newberry College", "NICKNAME", "Wolves"]],
   "annotations": [{"source": "WikiSQL_decl_sents", "text": "Newberry College's nickname is the wolves."}]}
]
"""


# --- settings and formats ---------------------------------------------------------------------------


def test_data_root_explicit_then_env_then_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("LORAKIT_DATA", str(tmp_path / "env"))
    assert data_root(tmp_path / "flag") == tmp_path / "flag"
    assert data_root() == tmp_path / "env"
    monkeypatch.delenv("LORAKIT_DATA")
    with pytest.raises(DataRootError, match=r"LORAKIT_DATA.*--data"):
        data_root()
    with pytest.raises(DataRootError):
        load_e2e("dev")


def test_linearize_e2e_as_in_lora_data():
    assert linearize_e2e(VAULTS_MR) == (
        "name : The Vaults | Type : pub | price : more than £30 | customer rating : 5 out of 5 | near : Café Adriatic"
    )
    assert linearize_e2e("name[Blue Spice], familyFriendly[yes]") == "name : Blue Spice | family friendly : yes"
    assert linearize_e2e(VAULTS_MR, rename_keys=False).startswith(
        "name : The Vaults | eatType : pub | priceRange : more than £30 | customer rating"
    )


@pytest.mark.parametrize("mr", ["name[X", "name[X] eatType[pub]", "[X]", "name[X],", "name[X]]"])
def test_parse_mr_rejects_malformed(mr):
    with pytest.raises(ValueError, match="malformed MR"):
        parse_mr(mr)


def test_linearize_triples_and_pairs():
    triples = [("A_b", "JOINED", "1973"), ("A_b", "location", "C")]
    assert linearize_triples(triples) == "A_b : JOINED : 1973 | A_b : location : C"
    assert linearize_triples(triples, lowercase_relation=True) == "A_b : joined : 1973 | A_b : location : C"
    examples = [Example("s1", ("r1", "r2")), Example("s2", ())]
    assert training_pairs(examples) == [("s1", "r1"), ("s1", "r2")]
    assert count_references(examples) == 2


def test_unknown_split_and_dataset(tmp_path):
    with pytest.raises(ValueError, match="unknown split 'validation'"):
        load_e2e("validation", tmp_path)
    with pytest.raises(ValueError, match="unknown dataset"):
        load_nlg("cnn", "dev", tmp_path)
    with pytest.raises(FileNotFoundError, match=r"devset\.csv"):
        load_e2e("dev", tmp_path)
    with pytest.raises(FileNotFoundError, match=r"testdata_with_lex\.xml"):
        load_webnlg("test", tmp_path)


# --- E2E --------------------------------------------------------------------------------------------


def test_e2e_groups_refs_in_first_appearance_order_with_bom(tmp_path):
    text = (
        "\ufeffmr,ref\r\n"
        '"name[B], eatType[pub]",B is a pub.\r\n'
        '"name[A], food[Thai]","A serves Thai,\r\nfood."\r\n'
        '"name[B], eatType[pub]",There is a pub called B.\r\n'
        "\r\n"
    )
    _write(tmp_path / "e2e" / "devset.csv", text)
    examples = load_e2e("dev", tmp_path)
    assert [ex.source for ex in examples] == ["name : B | Type : pub", "name : A | food : Thai"]
    assert examples[0].references == ("B is a pub.", "There is a pub called B.")
    assert examples[1].references == ("A serves Thai,\r\nfood.",)
    assert examples[0].meta == {"mr": "name[B], eatType[pub]"}


def test_e2e_test_split_prefers_file_with_refs(tmp_path):
    _write(tmp_path / "e2e" / "testset.csv", 'MR\n"name[A], area[riverside]"\n"name[B]"\n')
    examples = load_e2e("test", tmp_path)
    assert [ex.references for ex in examples] == [(), ()]
    assert examples[0].source == "name : A | area : riverside"
    _write(tmp_path / "e2e" / "testset_w_refs.csv", 'mr,ref\n"name[A], area[riverside]",A is by the river.\n')
    assert load_e2e("test", tmp_path)[0].references == ("A is by the river.",)


@pytest.mark.parametrize(
    ("body", "line", "message"),
    [
        ('mr\n"name[A]"\n', 1, "lacks columns mr,ref"),
        ('mr,ref\n"name[A]",A.\n"name[B]",B.,extra\n', 3, "expected 2 fields, found 3"),
        # the quoted reference spans lines 2-3, so the bad row starts on line 4
        ('mr,ref\n"name[A]","A\nis here."\n"name[B]"\n', 4, "expected 2 fields, found 1"),
        ('mr,ref\n"name[A]",A.\n"",B.\n', 3, "empty MR"),
        ('mr,ref\n"name[A]",A.\n"name[B], eatType pub",B.\n', 3, "malformed MR"),
        ('mr,ref\n"name[A]",\n', 2, "empty reference"),
        ('mr,ref\n"name[A]","A.\n', 2, "CSV error"),
    ],
)
def test_e2e_errors_name_file_and_line(tmp_path, body, line, message):
    path = _write(tmp_path / "bad_e2e.csv", body)
    with pytest.raises(DataFormatError) as info:
        read_e2e_csv(path)
    text = str(info.value)
    assert "bad_e2e.csv" in text
    assert f"line {line}" in text
    assert message in text


# --- WebNLG -----------------------------------------------------------------------------------------


def test_webnlg_entries_categories_and_good_only(tmp_path):
    _write(tmp_path / "webnlg2017" / "dev" / "2triples" / "b.xml", WEBNLG_XML)
    _write(tmp_path / "webnlg2017" / "dev" / "1triples" / "a.xml", WEBNLG_XML.replace('eid="Id', 'eid="X'))
    examples = load_webnlg("dev", tmp_path)
    assert [ex.meta["eid"] for ex in examples] == ["X1", "X2", "Id1", "Id2"]  # sorted paths, document order
    first = examples[0]
    assert first.source == "Aarhus : leaderName : Jacob_Bundsgaard"
    assert first.references == ("The leader of Aarhus is Jacob Bundsgaard.", "Aarhus leader Jacob Bundsgaard.")
    assert first.meta["category"] == "Airport" and first.meta["seen"] is True
    assert examples[1].source == "Aaron_Boogaard : birthYear : 1986 | Aaron_Boogaard : club : Wichita_Thunder"
    assert examples[1].meta["seen"] is False and examples[1].meta["size"] == 2
    assert [ex.meta["category"] for ex in load_webnlg("dev", tmp_path, categories="unseen")] == ["Athlete"] * 2
    assert len(load_webnlg("dev", tmp_path, categories="seen")) == 2
    assert load_webnlg("dev", tmp_path, good_only=True)[0].references == first.references[:1]
    with pytest.raises(ValueError, match="categories"):
        load_webnlg("dev", tmp_path, categories="new")


def test_webnlg_test_file_without_lex(tmp_path):
    no_lex = "\n".join(line for line in WEBNLG_XML.splitlines() if "<lex" not in line)
    _write(tmp_path / "webnlg2017" / "test" / "testdata_with_lex.xml", no_lex)
    assert [ex.references for ex in load_webnlg("test", tmp_path)] == [(), ()]


def test_test_splits_fall_back_to_the_inputs_only_files(tmp_path):
    """The files these shared tasks give out with the references held back; the official ones win."""
    no_lex = "\n".join(line for line in WEBNLG_XML.splitlines() if "<lex" not in line)
    _write(tmp_path / "webnlg2017" / "test" / "testdata_no_lex.xml", no_lex)
    assert [ex.references for ex in load_webnlg("test", tmp_path)] == [(), ()]
    _write(tmp_path / "webnlg2017" / "test" / "testdata_with_lex.xml", WEBNLG_XML)
    assert all(ex.references for ex in load_webnlg("test", tmp_path))
    inputs = '[{"tripleset": [["A", "B", "C"]], "subtree_was_extended": false}]'
    _write(tmp_path / "dart" / "dart-v1.1.1-full-test-inputs.json", inputs)
    assert [(ex.source, ex.references) for ex in load_dart("test", tmp_path)] == [("A : b : C", ())]
    with pytest.raises(FileNotFoundError, match=r"neither .*testset_w_refs\.csv nor .*testset\.csv"):
        load_e2e("test", tmp_path)


def test_webnlg_bad_xml_reports_parser_position(tmp_path):
    path = _write(tmp_path / "broken.xml", WEBNLG_XML.replace("</entry>", "</entri>", 1))
    with pytest.raises(DataFormatError) as info:
        read_webnlg_xml(path)
    assert "broken.xml" in str(info.value)
    assert "line 13, column" in str(info.value)


SECOND_ENTRY = WEBNLG_XML.index('<entry category="Athlete"')


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("modifiedtripleset>", "othertripleset>", "no <modifiedtripleset>"),
        ("Aaron_Boogaard | birthYear | 1986", "Aaron_Boogaard birthYear 1986", "not 'subject | property"),
        ("Aaron Boogaard, born in 1986, played for Wichita Thunder.", " ", "empty <lex>"),
    ],
)
def test_webnlg_bad_entry_names_eid_and_line(tmp_path, old, new, message):
    bad = WEBNLG_XML[:SECOND_ENTRY] + WEBNLG_XML[SECOND_ENTRY:].replace(old, new)
    path = _write(tmp_path / "entry.xml", bad)
    with pytest.raises(DataFormatError) as info:
        read_webnlg_xml(path)
    text = str(info.value)
    assert "entry.xml" in text and "eid=Id2" in text and "line 14" in text and message in text


def test_webnlg_manifest_matches_real_layout():
    root = _real("webnlg2017", "train")
    for split in ("train", "dev"):
        folder = root / "webnlg2017" / split
        if folder.is_dir():
            real = sorted(p.relative_to(root / "webnlg2017").as_posix() for p in folder.rglob("*.xml"))
            assert sorted(webnlg_manifest(split)) == real


# --- DART -------------------------------------------------------------------------------------------


def test_dart_entries(tmp_path):
    _write(tmp_path / "dart" / "dart-v1.1.1-full-dev.json", DART_JSON)
    examples = load_dart("dev", tmp_path)
    assert examples[0].source == "Mars Hill College : joined : 1973 | Mars Hill College : location : Mars Hill"
    assert len(examples[0].references) == 2
    assert examples[0].meta["subtree_was_extended"] is True
    assert examples[1].meta["subtree_was_extended"] is None
    assert examples[1].source == "Newberry College : nickname : Wolves"


@pytest.mark.parametrize(
    ("body", "where", "message"),
    [
        ('[{"tripleset": [["a", "b", "c"]], "annotations": []},\n {"annotations": []}]', "entry 1", "no 'tripleset'"),
        ('[{"tripleset": [["a", "b"]], "annotations": []}]', "entry 0", "triple is not"),
        ('[{"tripleset": [["a", "b", "c"]], "annotations": [{"source": "x"}]}]', "entry 0", "without a 'text'"),
        ('[\n  {"tripleset": [["a", "b", "c"]],\n   "annotations": [}\n]', "line 3, column", "invalid JSON"),
        ('{"tripleset": []}', "dart_bad.json", "expected a JSON list"),
    ],
)
def test_dart_errors_name_file_and_place(tmp_path, body, where, message):
    path = _write(tmp_path / "dart_bad.json", body)
    with pytest.raises(DataFormatError) as info:
        read_dart_json(path)
    text = str(info.value)
    assert "dart_bad.json" in text and where in text and message in text


# --- real data ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def e2e_dev():
    return load_e2e("dev", _real("e2e", "devset.csv"))


@pytest.fixture(scope="module")
def webnlg_train():
    return load_webnlg("train", _real("webnlg2017", "train"))


def test_real_e2e_dev(e2e_dev):
    assert len(e2e_dev) == 547
    assert count_references(e2e_dev) == 4672
    assert len(training_pairs(e2e_dev)) == 4672
    assert all(len(ex.references) >= 1 for ex in e2e_dev)
    assert e2e_dev[0].source == "name : Alimentum | area : city centre | family friendly : no"


def test_real_e2e_train_and_test():
    root = _real("e2e", "trainset.csv")
    train = load_e2e("train", root)
    assert count_references(train) == 42061
    assert len(train) == 4862
    assert train[0].meta["mr"] == VAULTS_MR
    assert train[0].source == linearize_e2e(VAULTS_MR)
    if (root / "e2e" / "testset.csv").exists() and not (root / "e2e" / "testset_w_refs.csv").exists():
        test = load_e2e("test", root)
        assert len(test) == 630 and count_references(test) == 0


def test_real_test_inputs_in_official_order():
    """The test inputs given out (references held back): counts and first inputs, in the official order."""
    root = _real("webnlg2017", "test", "testdata_no_lex.xml")
    webnlg = load_webnlg("test", root)
    assert len(webnlg) == 1862 and count_references(webnlg) == 0
    assert webnlg[0].meta["eid"] == "Id1"
    assert webnlg[0].source == "Abilene_Regional_Airport : cityServed : Abilene,_Texas"
    assert {ex.meta["seen"] for ex in webnlg} == {True, False}
    if (root / "dart" / "dart-v1.1.1-full-test-inputs.json").exists():
        dart = load_dart("test", root)
        assert len(dart) == 5097 and count_references(dart) == 0
        assert dart[0].source.startswith("Hawaii Five-O : notes : Episode: The Flight of the Jewels")


def test_real_webnlg_dev():
    dev = load_webnlg("dev", _real("webnlg2017", "dev"))
    assert (len(dev), count_references(dev)) == (872, 2268)
    # the first entry of LoRA's own webnlg_challenge_2017/dev.json, linearised by its converter
    assert dev[0].source == "Aarhus : leaderName : Jacob_Bundsgaard"
    good = load_webnlg("dev", REAL_ROOT, good_only=True)
    assert (len(good), count_references(good)) == (871, 2258)


def test_real_webnlg_train(webnlg_train):
    assert (len(webnlg_train), count_references(webnlg_train)) == (6940, 18102)
    assert all(ex.meta["seen"] for ex in webnlg_train)  # the challenge's train set has seen categories only
    assert {ex.meta["category"] for ex in webnlg_train} == {
        "Airport", "Astronaut", "Building", "City", "ComicsCharacter", "Food", "Monument", "SportsTeam",
        "University", "WrittenWork",
    }


def test_real_dart_dev():
    dev = load_dart("dev", _real("dart", "dart-v1.1.1-full-dev.json"))
    assert (len(dev), count_references(dev)) == (2768, 6980)
    assert dev[0].source == (
        "Mars Hill College : joined : 1973 | Mars Hill College : location : Mars Hill, North Carolina"
    )


# --- downloads --------------------------------------------------------------------------------------


class _Handler(SimpleHTTPRequestHandler):
    """Serves a folder; paths under /truncated/ promise more bytes than they send."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path.startswith("/truncated/"):
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b'mr,ref\n"name[A]",A.\n')
            return
        super().do_GET()


@pytest.fixture
def server(tmp_path, monkeypatch):
    """(served folder, base URL) of a real HTTP server on 127.0.0.1."""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    served = tmp_path / "served"
    served.mkdir()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Handler, directory=str(served)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield served, f"http://127.0.0.1:{httpd.server_address[1]}/"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


E2E_CSV = 'mr,ref\n"name[A], eatType[pub]",A is a pub.\n"name[A], eatType[pub]",The pub A.\n'


def test_download_e2e_then_load(server, tmp_path):
    served, url = server
    for name in ("trainset.csv", "devset.csv", "testset_w_refs.csv"):
        _write(served / "e2e" / name, E2E_CSV)
    dest = tmp_path / "root" / "e2e"
    paths = download_e2e(dest, base_url=url + "e2e/")
    assert sorted(p.name for p in dest.iterdir()) == ["devset.csv", "testset_w_refs.csv", "trainset.csv"]
    assert [p.name for p in paths] == ["trainset.csv", "devset.csv", "testset_w_refs.csv"]
    assert load_e2e("test", tmp_path / "root")[0].references == ("A is a pub.", "The pub A.")
    mask = os.umask(0)
    os.umask(mask)
    assert {p.stat().st_mode & 0o777 for p in paths} == {0o666 & ~mask}  # not mkstemp's private 0600


def test_download_keeps_existing_file_unless_asked(server, tmp_path):
    served, url = server
    _write(served / "devset.csv", E2E_CSV)
    existing = _write(tmp_path / "devset.csv", 'mr,ref\n"name[Mine]",Mine.\n')
    download_e2e(tmp_path, base_url=url, splits=["dev"])
    assert "Mine" in existing.read_text(encoding="utf-8")
    download_e2e(tmp_path, base_url=url, splits=["dev"], overwrite=True)
    assert existing.read_text(encoding="utf-8") == E2E_CSV


@pytest.mark.parametrize(
    ("path", "served_text", "message"),
    [
        ("missing/", None, "HTTP 404"),
        ("", "<html><body>Not here</body></html>", "not valid"),
        ("truncated/", None, "truncated download"),
    ],
)
def test_failed_download_leaves_no_file(server, tmp_path, path, served_text, message):
    served, url = server
    if served_text is not None:
        _write(served / "devset.csv", served_text)
    dest = tmp_path / "dest"
    with pytest.raises(DownloadError, match=message) as info:
        download_e2e(dest, base_url=url + path, splits=["dev"])
    assert "devset.csv" in str(info.value)
    assert list(dest.iterdir()) == []  # neither the file nor a temporary part file


def test_download_dart_and_webnlg(server, tmp_path):
    served, url = server
    _write(served / "dart" / "dart-v1.1.1-full-dev.json", DART_JSON)
    download_dart(tmp_path / "dart", base_url=url + "dart/", splits=["dev"])
    assert len(load_dart("dev", tmp_path)) == 2
    rels = webnlg_manifest("dev")
    assert len(rels) == 52 and rels[0] == "dev/1triples/1triple_allSolutions_Airport_dev_challenge.xml"
    for rel in rels:
        _write(served / "webnlg" / rel, WEBNLG_XML)
    download_webnlg(tmp_path / "webnlg2017", base_url=url + "webnlg/", splits=["dev"])
    assert len(load_webnlg("dev", tmp_path)) == 2 * len(rels)
    with pytest.raises(DownloadError, match="HTTP 404"):
        download_webnlg(tmp_path / "webnlg2017", base_url=url + "webnlg/", splits=["test"])
    assert not (tmp_path / "webnlg2017" / "test").exists() or not any((tmp_path / "webnlg2017" / "test").iterdir())
