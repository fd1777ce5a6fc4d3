"""Where files come from and how they are verified: every property of utils.sources, on
damaged copies, a local HTTP server on 127.0.0.1 and several processes filling one cache
at once."""

import hashlib
import http.server
import json
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from utils import runtime, sources

A, B = b"alpha file\n" * 50, b"beta file\n" * 70
SPEC = sources.FileSet(
    name="the Toy dataset",
    files=(
        sources.Expected("a.txt", md5=hashlib.md5(A).hexdigest()),
        sources.Expected("b.txt", sha256=hashlib.sha256(B).hexdigest()),
    ),
    subdirs=("Toy/raw", "Toy"),
    mirrors=("http://mirror-one.invalid/", "http://mirror-two.invalid/"),
    how_to="Ask a friend for the files.",
)
GOOD = {"a.txt": A, "b.txt": B}


def _write(folder: Path, files: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, payload in files.items():
        (folder / name).write_bytes(payload)
    return folder


def _no_network(url, dest, expected):
    raise OSError("network unreachable")


def _serve_good(url, dest, expected):
    return sources.write_bytes_atomic(dest, GOOD[dest.name])


# --- Verification ---------------------------------------------------------------------


def test_expected_checks_checksums_emptiness_and_structure(tmp_path):
    path = tmp_path / "a.txt"
    path.write_bytes(A)
    assert (
        sources.Expected("a.txt", md5=hashlib.md5(A).hexdigest()).problem(path) is None
    )
    prefix = sources.Expected("a.txt", sha256=hashlib.sha256(A).hexdigest()[:8])
    assert prefix.problem(path) is None
    wrong = sources.Expected("a.txt", md5="0" * 32, source="published for Toy")
    problem = wrong.problem(path)
    assert "MD5 is" in problem and "expected 00000000" in problem
    with pytest.raises(
        sources.BadFileError,
        match=r"a.txt is not the expected a.txt: MD5 .*Delete or replace it",
    ):
        wrong.verify(path)

    def no_alpha(p):
        if p.read_bytes().startswith(b"alpha"):
            raise sources.BadFileError("it starts with alpha")

    assert (
        sources.Expected("a.txt", check=no_alpha).problem(path)
        == "it starts with alpha"
    )
    empty = tmp_path / "empty.txt"
    empty.touch()
    assert sources.Expected("empty.txt").problem(empty) == "the file is empty"


def test_a_gzip_file_may_match_by_its_content(tmp_path):
    import gzip

    content = b"idx content" * 100
    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress(content, mtime=0))
    expected = sources.Expected(
        "x.gz", md5="0" * 32, gunzip_sha256=hashlib.sha256(content).hexdigest()
    )
    # a re-compressed copy: other bytes, same content
    assert expected.problem(path) is None
    path.write_bytes(gzip.compress(content + b"!", mtime=0))
    assert "unzipped content" in expected.problem(path)
    path.write_bytes(gzip.compress(content)[:-9])  # truncated gzip stream
    assert "could not be computed" in expected.problem(path)


def test_a_changed_file_is_verified_again(tmp_path):
    path = tmp_path / "a.txt"
    path.write_bytes(A)
    expected = sources.Expected("a.txt", md5=hashlib.md5(A).hexdigest())
    assert expected.problem(path) is None
    time.sleep(0.01)
    path.write_bytes(A[:-1] + b"?")  # same size, new content and modification time
    assert expected.problem(path) is not None


# --- locate: the order of sources, and damaged files ----------------------------------


def test_data_folder_comes_first(data_home):
    _write(data_home / "Toy", GOOD)
    assert sources.locate(SPEC, fetch=_no_network) == data_home / "Toy"


@pytest.mark.parametrize("damage", ["altered", "truncated", "empty"])
def test_a_damaged_data_folder_file_is_never_used_or_copied(
    data_home, cache_home, damage
):
    bad = {
        "altered": A.replace(b"alpha", b"ALPHA"),
        "truncated": A[:100],
        "empty": b"",
    }[damage]
    _write(data_home / "Toy", {"a.txt": bad, "b.txt": B})
    fetched = []

    def serve(url, dest, expected):
        fetched.append(dest.name)
        return _serve_good(url, dest, expected)

    folder = sources.locate(SPEC, fetch=serve)
    assert folder == cache_home / "Toy/raw" and fetched == ["a.txt", "b.txt"]
    assert (folder / "a.txt").read_bytes() == A  # the good copy, not the damaged one
    assert (
        data_home / "Toy" / "a.txt"
    ).read_bytes() == bad  # the data folder is only read


def test_the_error_names_each_damaged_file_and_the_reason(data_home, monkeypatch):
    _write(data_home / "Toy", {"a.txt": b"", "b.txt": B + b"extra"})
    with pytest.raises(sources.DatasetNotFoundError) as err:
        sources.locate(SPEC, fetch=_no_network)
    message = str(err.value)
    assert (
        f"data folder: {data_home / 'Toy'} (a.txt: the file is empty; b.txt: SHA-256 is"
        in message
    )
    assert "network unreachable" in message and "Ask a friend" in message


def test_fixing_the_input_fixes_the_next_run(data_home, monkeypatch):
    monkeypatch.setenv(sources.OFFLINE_ENV, "1")
    _write(data_home / "Toy", {"a.txt": A[:10], "b.txt": B})
    with pytest.raises(sources.DatasetNotFoundError, match="a.txt: MD5"):
        sources.locate(SPEC)
    _write(data_home / "Toy", {"a.txt": A})
    assert sources.locate(SPEC) == data_home / "Toy"


def test_a_zero_byte_or_damaged_cache_entry_is_fetched_again(data_home, cache_home):
    _write(cache_home / "Toy/raw", {"a.txt": b"", "b.txt": B[:-3]})
    fetched = []

    def serve(url, dest, expected):
        fetched.append(dest.name)
        return _serve_good(url, dest, expected)

    assert sources.locate(SPEC, fetch=serve) == cache_home / "Toy/raw"
    assert (
        fetched == ["a.txt", "b.txt"]
        and (cache_home / "Toy/raw/b.txt").read_bytes() == B
    )


def test_a_fetch_that_delivers_a_wrong_file_is_not_kept(data_home, cache_home):
    def wrong(url, dest, expected):
        return sources.write_bytes_atomic(dest, b"a wrong file")

    with pytest.raises(
        sources.DatasetNotFoundError,
        match=r"online: http://mirror-one.invalid/ \(BadFileError",
    ):
        sources.locate(SPEC, fetch=wrong)


def test_online_is_tried_mirror_by_mirror_and_then_cached(data_home, cache_home):
    calls = []

    def fetch(url, dest, expected):
        calls.append(url)
        if "mirror-one" in url:
            raise OSError("mirror down")
        return _serve_good(url, dest, expected)

    assert sources.locate(SPEC, fetch=fetch) == cache_home / "Toy/raw"
    assert list(data_home.iterdir()) == []
    assert calls == [
        "http://mirror-one.invalid/a.txt",
        "http://mirror-two.invalid/a.txt",
        "http://mirror-two.invalid/b.txt",
    ]
    # found, verified, not fetched
    assert sources.locate(SPEC, fetch=_no_network) == cache_home / "Toy/raw"


def test_offline_package_folders_are_verified_too(data_home, tmp_path):
    good = _write(tmp_path / "usr/share/good", GOOD)
    bad = _write(tmp_path / "usr/share/bad", {"a.txt": A, "b.txt": b"x"})
    spec = sources.FileSet(**{**SPEC.__dict__, "offline": (bad, good)})
    assert sources.locate(spec, fetch=_no_network) == good
    spec = sources.FileSet(
        **{**SPEC.__dict__, "offline": (bad, tmp_path / "not-installed")}
    )
    with pytest.raises(sources.DatasetNotFoundError) as err:
        sources.locate(spec, fetch=_no_network)
    assert f"offline package folder: {bad} (b.txt: SHA-256" in str(err.value)
    assert f"{tmp_path / 'not-installed'} (not installed)" in str(err.value)


def test_a_fetch_function_is_checked_like_a_download(data_home, cache_home):
    def build(folder):
        sources.write_bytes_atomic(folder / "a.txt", A)
        sources.write_bytes_atomic(folder / "b.txt", B)

    spec = sources.FileSet(
        name="a built dataset",
        files=SPEC.files,
        subdirs=("built",),
        fetch=build,
        fetch_from="the builder",
    )
    assert sources.locate(spec) == cache_home / "built"
    lazy = sources.FileSet(
        name="a lazy dataset",
        files=SPEC.files,
        subdirs=("lazy",),
        fetch=lambda folder: None,
        fetch_from="the lazy builder",
    )
    with pytest.raises(
        sources.DatasetNotFoundError,
        match=(
            r"online: the lazy builder \(BadFileError: it did not "
            r"write the expected files: a.txt missing"
        ),
    ):
        sources.locate(lazy)


def test_offline_switch_skips_the_network_and_is_strict(data_home, monkeypatch):
    monkeypatch.setenv(sources.OFFLINE_ENV, "1")
    with pytest.raises(
        sources.DatasetNotFoundError, match="skipped because GDL_OFFLINE"
    ):
        sources.locate(SPEC, fetch=lambda *a: pytest.fail("fetched although offline"))
    monkeypatch.setenv(sources.OFFLINE_ENV, "maybe")
    with pytest.raises(
        ValueError, match=r"GDL_OFFLINE='maybe' is not a valid switch value"
    ):
        sources.locate(SPEC, fetch=_no_network)


# --- Downloads from a real (local) HTTP server ----------------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 -- the http.server API
        if (
            self.path == "/short/a.txt"
        ):  # promises more bytes than it sends, then closes
            self.send_response(200)
            self.send_header("Content-Length", str(len(A)))
            self.end_headers()
            self.wfile.write(A[:50])
            self.wfile.flush()
            self.close_connection = True
        elif (
            self.path == "/portal/a.txt"
        ):  # a captive portal answers every URL with its web page
            page = (
                b"<!DOCTYPE html><html><head><title>Sign "
                b"in</title></head><body>Wi-Fi</body></html>"
            )
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)
        elif self.path == "/good/a.txt":
            self.send_response(200)
            self.send_header("Content-Length", str(len(A)))
            self.end_headers()
            self.wfile.write(A)
        else:
            self.send_error(404)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.timeout = 5
    thread = threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
    )
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_a_download_cut_short_is_not_kept(server, tmp_path):
    dest = tmp_path / "out" / "a.txt"
    with pytest.raises(Exception, match="cut short|IncompleteRead"):
        sources.download(f"{server}/short/a.txt", dest, timeout=5)
    # no partial or temporary file
    assert not dest.exists() and list((tmp_path / "out").iterdir()) == []
    assert (
        sources.download(
            f"{server}/good/a.txt", dest, SPEC.files[0], timeout=5
        ).read_bytes()
        == A
    )


def test_a_captive_portal_page_is_never_returned(server, data_home, cache_home):
    from utils.data import text_check

    spec = sources.FileSet(
        name="a text",
        files=(sources.Expected("a.txt", check=text_check(100, 10_000)),),
        subdirs=("text",),
        mirrors=(f"{server}/portal/",),
    )
    for _ in range(2):  # and not on a later run either: nothing was cached
        with pytest.raises(sources.DatasetNotFoundError, match="it is a web page"):
            sources.locate(spec)
    assert not (cache_home / "text" / "a.txt").exists()


def test_an_unreachable_server_fails_fast(data_home):
    spec = sources.FileSet(
        name="the Toy dataset",
        files=(sources.Expected("a.txt"),),
        subdirs=("Toy",),
        mirrors=("http://127.0.0.1:9/",),  # nothing listens on port 9
    )
    start = time.perf_counter()
    with pytest.raises(
        sources.DatasetNotFoundError, match=r"online: http://127.0.0.1:9/ \(URLError"
    ):
        sources.locate(spec)
    assert time.perf_counter() - start < 15


# --- Atomic writes and concurrent cache fills -----------------------------------------


def test_atomic_path_leaves_nothing_behind_on_failure(tmp_path):
    dest = tmp_path / "f.bin"
    dest.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with sources.atomic_path(dest) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("interrupted")
    assert dest.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == [
        "f.bin"
    ]


def test_a_write_that_fills_the_disk_is_one_clear_error_and_the_old_file_stays(
    tmp_path, monkeypatch
):
    dest = tmp_path / "ckpt.pt"
    dest.write_bytes(b"old")
    usage = sources.shutil.disk_usage(tmp_path)
    full = type(usage)(usage.total, usage.total - 4096, 4096)
    monkeypatch.setattr(sources.shutil, "disk_usage", lambda folder: full)
    # torch.save on a full disk: its own words, not ENOSPC
    with pytest.raises(sources.DiskFullError, match=r"is full \(4,096 bytes free\)"):
        with sources.atomic_path(dest) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError(
                "[enforce fail at inline_container.cc:664] unexpected pos"
            )
    assert dest.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]
    # an ENOSPC is a full disk whatever the free space says afterwards
    monkeypatch.setattr(sources.shutil, "disk_usage", lambda folder: usage)
    with pytest.raises(sources.DiskFullError, match="4 bytes written"):
        with sources.atomic_path(dest) as tmp:
            tmp.write_bytes(b"half")
            raise OSError(sources.errno.ENOSPC, "No space left on device")
    # any other failure with space to spare stays itself
    with pytest.raises(RuntimeError, match="interrupted"):
        with sources.atomic_path(dest) as tmp:
            raise RuntimeError("interrupted")
    assert dest.read_bytes() == b"old"


def test_a_finished_write_is_flushed_to_the_disk_before_and_after_its_rename(
    tmp_path, monkeypatch
):
    synced = []
    real = sources._fsync
    monkeypatch.setattr(
        sources,
        "_fsync",
        lambda path, directory=False: (
            synced.append((Path(path), directory)) or real(path, directory)
        ),
    )
    dest = tmp_path / "record.json"
    with sources.atomic_path(dest) as tmp:
        tmp.write_text("{}")
    assert synced == [(tmp, False), (tmp_path, True)] and dest.read_text() == "{}"


_FILL = textwrap.dedent("""
    import hashlib, json, sys
    from pathlib import Path
    from utils import sources
    # the payloads, and each one's expected SHA-256
    mirror, checks = Path(sys.argv[1]), Path(sys.argv[2])
    names = ["f%d.bin" % i for i in range(4)]
    files = tuple(sources.Expected(n, sha256=(checks / n).read_text()) for n in names)
    mirrors = (mirror.as_uri() + "/",)
    spec = sources.FileSet(
        name="shared", subdirs=("shared",), mirrors=mirrors, files=files
    )
    folder = sources.locate(spec)
    sums = {n: hashlib.sha256((folder / n).read_bytes()).hexdigest() for n in names}
    print(json.dumps(sums))
""")


def test_processes_filling_one_cache_at_once_all_get_the_same_whole_files(tmp_path):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    digests = {}
    for i in range(4):
        payload = bytes((i * 31 + j) % 251 for j in range(3_000_000))
        (mirror / f"f{i}.bin").write_bytes(payload)
        digests[f"f{i}.bin"] = hashlib.sha256(payload).hexdigest()
    checks = tmp_path / "checks"
    checks.mkdir()
    for name, digest in digests.items():
        (checks / name).write_text(digest)
    env = {
        "GDL_CACHE_DIR": str(tmp_path / "cache"),
        "GDL_DATA_DIR": str(tmp_path / "empty"),
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(Path(__file__).resolve().parent.parent),
    }
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _FILL, str(mirror), str(checks)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    results = [p.communicate(timeout=120) for p in procs]
    for (out, err), proc in zip(results, procs):
        assert proc.returncode == 0, err
        assert json.loads(out) == digests
    leftovers = [
        p.name
        for p in (tmp_path / "cache" / "shared").iterdir()
        if p.name not in digests
    ]
    assert leftovers == []  # no temporary files left


# --- Strict switches ------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, on",
    [
        ("1", True),
        ("TRUE", True),
        (" yes ", True),
        ("on", True),
        ("0", False),
        ("false", False),
        ("no", False),
        ("off", False),
        ("", False),
    ],
)
def test_switch_values_that_are_accepted(monkeypatch, value, on):
    monkeypatch.setenv("GDL_SOME_SWITCH", value)
    assert runtime.env_flag("GDL_SOME_SWITCH") is on


def test_the_file_handling_starts_without_torch():
    """utils.sources (downloads, cache, checksums) imports no torch: processes that
    only fetch or check files start in a fraction of a second, not seconds."""
    probe = "import sys; from utils import sources; print('torch' in sys.modules)"
    done = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


@pytest.mark.parametrize("value", ["ture", "2", "smoke", "full", "1 0"])
def test_a_mistyped_switch_is_an_error_naming_the_variable_and_values(
    monkeypatch, value
):
    monkeypatch.setenv(runtime.SMOKE_ENV, value)
    with pytest.raises(
        ValueError,
        match=rf"GDL_SMOKE='{value}' is not a valid switch value; use 1, true",
    ):
        runtime.is_smoke()
