"""What the web server hands out and accepts: bind/auth rules, file serving, forged file
payloads, upload size limit, the busy answer of a full queue, malformed data over the API."""

import json
import os
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from conftest import running_app

pytest.importorskip("gradio_client")


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _call(base: str, api: str, data: list, session_hash: str = "sectest") -> tuple[str, str]:
    """A raw call of ``/gradio_api/call/<api>``: (event, data) of its final server-sent event,
    e.g. ("complete", "[...]") or ("error", "..."). Nothing of gradio_client's own checks."""
    body = json.dumps({"data": data, "session_hash": session_hash}).encode()
    req = urllib.request.Request(f"{base}gradio_api/call/{api}", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        event_id = json.loads(r.read())["event_id"]
    with urllib.request.urlopen(f"{base}gradio_api/call/{api}/{event_id}", timeout=300) as r:
        text = r.read().decode()
    events = [block for block in text.strip().split("\n\n") if block.startswith("event:")]
    last = events[-1].split("\n", 1)
    return last[0].removeprefix("event: ").strip(), last[1].removeprefix("data: ").strip() if len(last) > 1 else ""


def _upload(base: str, path: Path) -> tuple[int, str]:
    boundary = "----sectestboundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{path.name}\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + path.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    req = urllib.request.Request(f"{base}gradio_api/upload", body,
                                 {"Content-Type": f"multipart/form-data; boundary={boundary}"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


# -- 1. bind, auth, share ---------------------------------------------------------------------
@pytest.mark.parametrize("args, message", [
    (["--host", "0.0.0.0"], "refusing to serve on 0.0.0.0 without --auth"),
    (["--host", "192.168.1.20"], "refusing to serve on 192.168.1.20 without --auth"),
    (["--host", "::"], "refusing to serve on :: without --auth"),
    (["--share"], "refusing to serve on a public share link without --auth"),
    (["--host", "0.0.0.0", "--auth", "nopassword"], "user:password"),
    (["--host", "0.0.0.0", "--auth", "alice:"], "user:password"),
    (["--max-upload-mb", "0"], "must be positive"),
])
def test_unsafe_serving_refuses_with_a_clear_message(args, message):
    out = subprocess.run([sys.executable, "app.py", *args], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and message in out.stderr


def test_defaults_are_loopback_without_share():
    import importlib.util

    spec = importlib.util.spec_from_file_location("workbench_app", Path(__file__).resolve().parents[2] / "app.py")
    app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app)

    parser_defaults = subprocess.run([sys.executable, "app.py", "--help"], capture_output=True, text=True).stdout
    assert "default: loopback only" in parser_defaults and "off by default" in parser_defaults
    assert app._is_loopback("127.0.0.1") and app._is_loopback("::1") and not app._is_loopback("0.0.0.0")


# -- a running server shared by the tests below --------------------------------------------------
@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("secserver")
    secret = folder / "outside" / "secret.txt"
    secret.parent.mkdir()
    secret.write_text("top secret")
    with running_app(folder, "--max-upload-mb", "0.05", env={"GRADIO_TEMP_DIR": str(folder / "gradio-tmp")}) as url:
        yield {"url": url, "folder": folder, "secret": secret}


def _fake_session(folder: Path) -> Path:
    from workbench.training.job import new_session_id

    session = folder / "sessions" / new_session_id()
    session.mkdir(parents=True)
    (session / "job.json").write_text('{"secret": "job of someone else"}')
    (session / "dataset.jsonl").write_text('{"prompt": "private", "completion": "data"}\n')
    return session


def test_uploaded_file_is_served_back(server):
    """The control: what the server must serve (an upload) is served, so the refusals below
    are refusals and not a broken route."""
    data = server["folder"] / "ok.jsonl"
    data.write_text('{"prompt": "a", "completion": "b"}\n')
    status, body = _upload(server["url"], data)
    assert status == 200
    uploaded = json.loads(body)[0]
    status, content = _get(f"{server['url']}gradio_api/file={uploaded}")
    assert status == 200 and b'"completion": "b"' in content


def test_files_outside_the_allowed_folders_are_refused(server):
    base, secret = server["url"] + "gradio_api/file=", server["secret"]
    session = _fake_session(server["folder"])
    upload_dir = server["folder"] / "gradio-tmp"
    upload_dir.mkdir(exist_ok=True)
    link = upload_dir / "innocent.txt"
    link.symlink_to(secret)
    link_dir = upload_dir / "linked-folder"
    link_dir.symlink_to(secret.parent, target_is_directory=True)
    from workbench.paths import cache_dir

    tiny_config = next(Path(os.environ["WORKBENCH_CACHE"]).glob("models/*/config.json"), None)
    attempts = [
        str(secret), "/etc/passwd", "/proc/self/environ",
        f"{upload_dir}/../outside/secret.txt",
        f"{upload_dir}/..%2Foutside%2Fsecret.txt",
        urllib.parse.quote(f"{upload_dir}/../outside/secret.txt", safe=""),
        urllib.parse.quote(urllib.parse.quote(f"{upload_dir}/../outside/secret.txt", safe=""), safe=""),
        "%2Fetc%2Fpasswd", "%252Fetc%252Fpasswd", "..%2F..%2F..%2F..%2Fetc%2Fpasswd", "../../../../../../etc/passwd",
        str(link), f"{link_dir}/secret.txt",
        str(session / "job.json"), str(session / "dataset.jsonl"), str(session),
        "file:///etc/passwd",
    ] + ([str(tiny_config)] if tiny_config else [])
    assert cache_dir()  # the cache is blocked too (tiny_config lives there)
    for path in attempts:
        status, body = _get(base + path)
        assert status in (400, 403, 404), (path, status)
        assert b"top secret" not in body and b"root:" not in body and b"someone else" not in body, path


def test_forged_file_payloads_are_refused(server):
    """A FileData naming a file the server did not receive as an upload (a system file,
    another session's data) is refused before our code sees it."""
    session = _fake_session(server["folder"])
    for path in ("/etc/passwd", str(server["secret"]), str(session / "dataset.jsonl"),
                 f"{server['folder']}/gradio-tmp/../outside/secret.txt"):
        forged = {"path": path, "meta": {"_type": "gradio.FileData"}, "orig_name": "data.jsonl"}
        event, data = _call(server["url"], "inspect", [forged, "tiny", "auto", "", None, 0, False])
        assert event == "error", (path, event, data[:200])
        assert "someone else" not in data and "private" not in data and "root:" not in data
        event, data = _call(server["url"], "start_run", ["tiny", "lora", "float32", "auto", 1, 64, 1, False, "adamw",
                                                         "cpu", forged, "auto", "", 0, False, 2, 1e-3, 1, "single", "none"]
                                                        + [None] * 15)
        assert event == "error", (path, event, data[:200])
    assert [p.name for p in (server["folder"] / "sessions").iterdir() if (p / "worker.pid").exists()] == []


def test_upload_size_limit_is_enforced_by_the_server(server):
    big = server["folder"] / "big.jsonl"
    big.write_text('{"prompt": "a", "completion": "b"}\n' * 3000)  # ~100 KB > 0.05 MiB
    status, body = _upload(server["url"], big)
    assert status == 413 and "maximum allowed size" in body
    small = server["folder"] / "small.jsonl"
    small.write_text('{"prompt": "a", "completion": "b"}\n' * 10)
    assert _upload(server["url"], small)[0] == 200


@pytest.mark.parametrize("name, content, message", [
    ("broken.json", '[{"prompt": "a", "completion": ', "broken.json"),
    ("rows.jsonl", '{"prompt": "a", "completion": "b"}\nnot json\n', "line 2"),
    ("empty.csv", "", "empty.csv"),
    ("binary.txt", "\x00\x01\x02" * 100, "binary content"),
], ids=["broken-json", "bad-jsonl-line", "empty-csv", "binary-txt"])
def test_malformed_data_over_the_api_is_a_message_and_the_server_stays_up(server, name, content, message):
    from gradio_client import Client, handle_file

    path = server["folder"] / name
    path.write_text(content)
    client = Client(server["url"], verbose=False)
    summary, *_ = client.predict(handle_file(str(path)), "tiny", "auto", "", None, 0, False, api_name="/inspect")
    assert summary.startswith("**Cannot use this file:**") and message in summary
    assert "Predicted peak" in client.predict("tiny", "lora", "bfloat16", "auto", 1, 64, 1, False, "adamw", "cuda",
                                              *[None] * _knob_count(), api_name="/plan")[0]


def _knob_count() -> int:
    from workbench.ui.plan_tab import KNOB_NAMES

    return len(KNOB_NAMES)


@pytest.mark.parametrize("model", ["file:///etc/passwd", "https://evil.example/model", "/etc", "../../../../etc",
                                   "a/../../b", "org/name\x00"])
def test_model_names_from_the_api_are_checked(server, model):
    from gradio_client import Client

    client = Client(server["url"], verbose=False)
    summary = client.predict(model, "lora", "bfloat16", "auto", 1, 64, 1, False, "adamw", "cuda",
                             *[None] * _knob_count(), api_name="/plan")[0]
    assert summary.startswith("**Cannot plan:**")
    assert "URLs are not accepted" in summary or "outside the model folders" in summary or "not a model name" in summary \
        or "control characters" in summary


@pytest.mark.parametrize("session_id", ["../../etc/passwd", "..", "20260101-000000-abcdef12/../x", "a/b", "x\x00y",
                                        "20260101-000000-ABCDEF12", "<script>", "2026" * 40])
def test_hostile_session_ids_over_the_api(server, session_id):
    from gradio_client import Client

    client = Client(server["url"], verbose=False)
    status, *_ = client.predict(session_id, api_name="/run_status")
    assert status.startswith("**invalid session id")
    assert client.predict(session_id, api_name="/cancel_run").startswith("**invalid session id")


def test_only_the_documented_endpoints_are_callable_by_clients():
    """Events the page uses internally are private (``api_visibility="private"``): gradio's
    client libraries cannot call them. Everything callable does its own checks."""
    from workbench.ui.app import build_app

    info = build_app().get_api_info()
    assert sorted(info["named_endpoints"]) == ["/adapters", "/cancel_run", "/chat", "/compare", "/evaluate", "/inspect",
                                               "/per_gpu", "/plan", "/run_status", "/sessions", "/start_run",
                                               "/what_changed"]
    assert not info.get("unnamed_endpoints")
