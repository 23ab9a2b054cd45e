"""The HTML run report: written by `hardneg mine`, self-contained, rendered by headless Chromium offline."""

import os
import shutil
import socketserver
import subprocess
import threading
from html.parser import HTMLParser

import pytest
from conftest import write_jsonl

from hardneg import storage
from hardneg.cli import main
from hardneg.report import REPORT_NAME, build_report, read_sample, write_report

CHROMIUM = next((shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome") if shutil.which(name)), None)


class Page(HTMLParser):
    """What the report is made of: headings, images, links and table rows by class."""

    def __init__(self, text: str):
        super().__init__()
        self.headings, self.images, self.urls, self.rows = [], [], [], {}
        self._heading, self._table = None, None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.urls += [attrs[key] for key in ("src", "href") if key in attrs]
        if tag in ("h1", "h2", "h3"):
            self._heading = ""
        elif tag == "img":
            self.images.append(attrs)
        elif tag == "table":
            self._table = attrs.get("class", "")
        elif tag == "tr" and self._table is not None:
            self.rows[self._table] = self.rows.get(self._table, 0) + 1

    def handle_endtag(self, tag):
        if tag in ("h1", "h2", "h3") and self._heading is not None:
            self.headings.append(self._heading.strip())
            self._heading = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        if self._heading is not None:
            self._heading += data


@pytest.fixture(scope="module")
def mined_run(ray_session, tiny_model_path, real_pairs, tmp_path_factory):
    """A real small run: `hardneg mine` on 60 pairs with the tiny model (it writes report.html)."""
    base = tmp_path_factory.mktemp("report")
    pairs = write_jsonl(base / "pairs.jsonl", real_pairs[:60])
    run_dir = base / "run"
    assert main(["mine", pairs, str(run_dir), "--model", tiny_model_path, "--num-negatives", "3", "--index", "flat",
                 "--relative-margin", "0.05", "--ray-in-process", "always"]) == 0  # the report is the point
    return run_dir


def test_mine_writes_a_report_with_every_section(mined_run, capsys):
    page = Page((mined_run / REPORT_NAME).read_text())
    assert page.headings[:2] == ["hardneg run report", "Round 0"]
    assert {"Stages", "Sample queries"} <= set(page.headings)
    alts = {image["alt"] for image in page.images}
    assert alts == {"positive and negative score histograms", "negatives per query", "candidates removed by filter", "stage times"}
    assert all(image["src"].startswith("data:image/png;base64,") for image in page.images)
    assert not [url for url in page.urls if not url.startswith("data:")]  # nothing to fetch
    assert page.rows["samples"] == 1 + 5  # header + SAMPLE_QUERIES
    # prepare_inputs, embed (corpus and queries in one run), index, mine (search, mine, write: on Ray), recall_check (faiss flat)
    assert page.rows["stages"] == 1 + 5
    text = (mined_run / REPORT_NAME).read_text()
    assert "index recall" in text and "negatives per query" in text


def test_inspect_names_the_report(mined_run, capsys):
    capsys.readouterr()
    assert main(["inspect", str(mined_run)]) == 0
    assert f"report: {mined_run / REPORT_NAME}" in capsys.readouterr().out


def test_report_command_writes_where_asked(mined_run, tmp_path, capsys):
    out = tmp_path / "elsewhere.html"
    assert main(["report", str(mined_run), "-o", str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"hardneg report: {out}"
    assert Page(out.read_text()).headings[1] == "Round 0"


def test_sample_reads_only_what_it_is_asked(mined_run):
    sample = read_sample(str(mined_run / "rounds" / "00000" / "mined"), ["positive_score", "no_such_column"], limit=7)
    assert sample.num_rows == 7 and sample.column_names == ["positive_score"]


def test_report_of_an_s3_run_dir(mined_run, s3_storage):
    """The run directory copied to S3 (moto): the report reads its rounds there and is written there."""
    loc = storage.resolve("s3://hardneg-test/report-run")
    loc.fs.put(str(mined_run) + "/", loc.path, recursive=True)
    url = write_report("s3://hardneg-test/report-run")
    assert url == "s3://hardneg-test/report-run/" + REPORT_NAME
    page = Page(storage.read_text(url))
    assert page.rows["samples"] == 6 and len(page.images) == 4


# Chromium's own background calls (clock, component updates, sign-in), made whatever the page is.
CHROMIUM_OWN_HOSTS = {"clients2.google.com", "update.googleapis.com", "accounts.google.com", "redirector.gvt1.com",
                      "safebrowsing.googleapis.com", "optimizationguide-pa.googleapis.com", "clientservices.googleapis.com"}


def render_offline(page: str, screenshot, profile) -> list[str]:
    """Screenshot ``page`` in headless Chromium whose every network request goes to a local proxy that
    records it and answers 502; returns the hosts the page asked for (Chromium's own calls left out)."""
    requested = []

    class Refuse(socketserver.BaseRequestHandler):
        def handle(self):
            line = self.request.recv(4096).split(b"\r\n")[0].decode("latin-1")  # "GET http://h/x HTTP/1.1" | "CONNECT h:443 ..."
            requested.append(line.split()[1].split("://")[-1].split("/")[0].split(":")[0] if " " in line else line)
            self.request.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")

    proxy = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Refuse)
    proxy.daemon_threads = True
    serving = threading.Thread(target=proxy.serve_forever, daemon=True)
    serving.start()
    try:
        result = subprocess.run([
            CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}",
            f"--proxy-server=http://127.0.0.1:{proxy.server_address[1]}", "--proxy-bypass-list=<-loopback>",
            f"--screenshot={screenshot}", "--window-size=1200,3000", page,
        ], capture_output=True, text=True, timeout=120)
    finally:
        proxy.shutdown()
        proxy.server_close()
    assert result.returncode == 0, result.stderr[-2000:]
    return [host for host in requested if host not in CHROMIUM_OWN_HOSTS]


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (apt-get install chromium; .ci/run installs it)")
def test_chromium_renders_the_report_without_touching_the_network(mined_run, tmp_path):
    control = tmp_path / "control.html"
    control.write_text("<img src='http://example.com/a.png'><img src='https://example.org/b.png'>")
    assert set(render_offline(control.as_uri(), tmp_path / "control.png", tmp_path / "p0")) >= {"example.com", "example.org"}

    screenshot = tmp_path / "report.png"
    assert render_offline((mined_run / REPORT_NAME).as_uri(), screenshot, tmp_path / "p1") == []
    png = screenshot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert int.from_bytes(png[16:20], "big") == 1200 and int.from_bytes(png[20:24], "big") == 3000
    assert len(png) > 50_000  # figures and tables, not a blank page
    if os.environ.get("HARDNEG_REPORT_SCREENSHOT"):
        shutil.copy(screenshot, os.environ["HARDNEG_REPORT_SCREENSHOT"])


def test_build_report_of_an_empty_run(tmp_path):
    page = Page(build_report(str(tmp_path / "nothing")))
    assert page.headings == ["hardneg run report"] and not page.images
