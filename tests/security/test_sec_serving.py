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
    (["--export-max-age-hours", "0"], "must be positive"),
    # issue 15, finding 9: a second --auth of a user silently replaced the first; a name with a
    # leading space could never sign in (the sign-in form strips it)
    (["--auth", "alice:one", "--auth", "alice:two"], "'alice' is given more than once"),
    (["--auth", " alice:pw"], "must not begin or end with a space"),
    (["--auth", "alice :pw"], "must not begin or end with a space"),
    (["--auth", "alice: pw"], "must not begin or end with a space"),
    (["--auth", "alice:pw "], "must not begin or end with a space"),
    # issue 15, finding 6: a Host name other than loopback means visitors from elsewhere
    (["--allowed-host", "workbench.example"], "refusing to answer to --allowed-host workbench.example without --auth"),
    (["--allowed-host", "workbench.example:80", "--auth", "a:b"], "is not a host name"),
    (["--allowed-host", "evil/path", "--auth", "a:b"], "is not a host name"),
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
    help_text = " ".join(parser_defaults.split())  # what --host changes is said next to it
    assert "answers only to the Host names 127.0.0.1, localhost and [::1]" in help_text
    assert "requires --auth" in help_text and "--allowed-host NAME" in help_text and "DNS rebinding" in help_text
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
                                               "/teach", "/what_changed"]
    assert not info.get("unnamed_endpoints")


# -- issue 15: DNS rebinding, cross-site requests, request bodies --------------------------------
def _port(base: str) -> int:
    return urllib.parse.urlsplit(base).port


def _with_host(base: str, method: str, path: str, host: str, headers: dict | None = None,
               body: bytes = b"") -> tuple[int, bytes]:
    """A request whose ``Host`` header is ``host`` (what a browser sends after DNS rebinding)."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", _port(base), timeout=30)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        conn.putheader("Host", host)
        for name, value in {**(headers or {}), "Content-Length": str(len(body))}.items():
            conn.putheader(name, value)
        conn.endheaders(body)
        response = conn.getresponse()
        return response.status, response.read(2**20)
    finally:
        conn.close()


def _raw(base: str, head: str, parts: list[bytes] = ()) -> tuple[int, bytes]:
    """Send a request's head and then ``parts`` on a plain socket; (status, body) of the answer.
    The head says ``Connection: close``, so the answer ends when the server closes."""
    import socket

    with socket.create_connection(("127.0.0.1", _port(base)), timeout=60) as sock:
        sock.sendall(head.encode())
        for part in parts:
            sock.sendall(part)
        data = b""
        while len(data) <= 2**21:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    head_bytes, _, body = data.partition(b"\r\n\r\n")
    return int(head_bytes.split(b" ", 2)[1]), body


REBINDING_HOSTS = ["rebind.attacker.example:{port}", "rebind.attacker.example", "127.0.0.1.attacker.example:{port}",
                   "localhost.attacker.example", "127.0.0.1@attacker.example", "attacker.example/127.0.0.1",
                   "0.0.0.0:{port}", "192.168.1.20:{port}", "[::2]:{port}", "localhost:99999", ""]


@pytest.mark.parametrize("host", REBINDING_HOSTS)
def test_other_host_names_are_refused_before_any_route(server, host):
    """Finding 6: with ``Host: rebind.attacker.example`` and a matching Origin the loopback app
    answered /config, queue/join and, through /queue/data, the runs table. Now every route,
    the event stream included, answers 400 to a Host that is not a loopback name."""
    host = host.format(port=_port(server["url"]))
    origin = {"Origin": f"http://{host}"}
    join = json.dumps({"data": [], "fn_index": 0, "session_hash": "rebind"}).encode()
    for method, path, body in (("GET", "/config", b""), ("GET", "/", b""), ("GET", "/gradio_api/info", b""),
                               ("GET", "/gradio_api/queue/data?session_hash=rebind", b""),
                               ("POST", "/gradio_api/queue/join", join), ("POST", "/gradio_api/call/sessions", b"{}")):
        status, answer = _with_host(server["url"], method, path, host, {**origin, "Content-Type": "application/json"},
                                    body)
        assert status == 400, (host, path, status)
        assert b"components" not in answer and b"event_id" not in answer and len(answer) < 200


@pytest.mark.parametrize("host", ["127.0.0.1:{port}", "localhost:{port}", "LOCALHOST:{port}", "[::1]:{port}",
                                  "127.0.0.1", "localhost"])
def test_loopback_host_names_are_answered(server, host):
    status, answer = _with_host(server["url"], "GET", "/config", host.format(port=_port(server["url"])))
    assert status == 200 and b"components" in answer


@pytest.mark.parametrize("header", [{"Origin": "http://attacker.example"}, {"Origin": "null"},
                                    {"Origin": "http://127.0.0.1:1"}, {"Origin": "https://localhost.attacker.example"},
                                    {"Referer": "http://attacker.example/page.html"}])
def test_cross_site_state_changing_requests_are_refused(server, header):
    """Finding 6: a cross-site multipart upload executed (blind disk filling). Uploads, queue
    joins, API calls and sign-ins from another origin are now refused before they run."""
    base, folder = server["url"], server["folder"] / "gradio-tmp"
    before = sorted(p for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else []
    boundary = "xsite"
    upload = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"fill.bin\"\r\n\r\n"
              + "x" * 1000 + f"\r\n--{boundary}--\r\n").encode()
    host = f"127.0.0.1:{_port(base)}"
    for path, body, kind in (("/gradio_api/upload", upload, f"multipart/form-data; boundary={boundary}"),
                             ("/gradio_api/queue/join", b'{"data": [], "fn_index": 0, "session_hash": "x"}',
                              "application/json"),
                             ("/gradio_api/call/sessions", b'{"data": []}', "application/json"),
                             ("/login", b"username=a&password=b", "application/x-www-form-urlencoded")):
        status, answer = _with_host(base, "POST", path, host, {**header, "Content-Type": kind}, body)
        assert status == 403 and b"cross-site" in answer, (path, status, answer[:200])
    after = sorted(p for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else []
    assert after == before  # nothing was written
    status, answer = _with_host(base, "POST", "/gradio_api/upload", host,  # the control: this very page's origin
                                {"Origin": f"http://{host}", "Content-Type": f"multipart/form-data; boundary={boundary}"},
                                upload)
    assert status == 200 and b"fill.bin" in answer


def test_request_bodies_are_limited_before_they_are_read(server):
    """Finding 9: a 200 MB request body was accepted and echoed back in the error. Now a body
    over its limit -- declared by Content-Length or counted as it streams in chunks -- is
    answered 413 with a short message before it is read, and no error echoes a body."""
    base, host = server["url"], f"127.0.0.1:{_port(server['url'])}"
    for path in ("/gradio_api/queue/join", "/gradio_api/call/plan", "/gradio_api/upload"):
        head = (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {200 * 2**20}\r\nConnection: close\r\n\r\n")
        status, answer = _raw(base, head)  # only the head is sent: the answer cannot wait for the body
        assert status == 413 and b"maximum allowed size" in answer and len(answer) < 300, (path, status)
    chunk = b"A" * 2**20
    head = (f"POST /gradio_api/queue/join HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
    parts = [b"%x\r\n" % len(chunk) + chunk + b"\r\n"] * 4 + [b"1\r\nA\r\n"]  # 4 MiB + 1 byte, never ended
    status, answer = _raw(base, head, parts)
    assert status == 413 and len(answer) < 300 and b"AAAA" not in answer
    invalid = b'{"data": "' + b"A" * (3 * 2**20) + b'", "session_hash": 5}'  # under the limit, but invalid
    status, answer = _with_host(base, "POST", "/gradio_api/queue/join", host, {"Content-Type": "application/json"},
                                invalid)
    assert status == 422 and b"AAAA" not in answer and len(answer) < 4000 and b"session_hash" in answer


def test_host_names_a_server_bound_elsewhere_answers_to():
    """Bound to an address that is not loopback (``--auth`` is required there), the server
    answers to that address, the loopback names and each ``--allowed-host``; bound to all
    interfaces, to any address literal too (a literal cannot be rebound to another name)."""
    from workbench.ui.serving import HostPolicy, same_origin

    lan = HostPolicy.for_bind("192.168.1.20", ("workbench.example",))
    assert all(lan.accepts(h) for h in ("192.168.1.20:7860", "workbench.example", "WORKBENCH.example:443", "localhost"))
    assert not any(lan.accepts(h) for h in ("10.0.0.7:7860", "attacker.example", "workbench.example.attacker.example"))
    wildcard = HostPolicy.for_bind("0.0.0.0")
    assert all(wildcard.accepts(h) for h in ("10.0.0.7:7860", "[fe80::1]:7860", "127.0.0.1", "localhost:7860"))
    assert not wildcard.accepts("rebind.attacker.example:7860")
    shared = HostPolicy.for_bind("127.0.0.1", share=True)
    assert shared.accepts("abcdef.gradio.live") and not HostPolicy.for_bind("127.0.0.1").accepts("abcdef.gradio.live")
    assert same_origin("https://workbench.example", "workbench.example")  # a TLS proxy forwarding Host
    assert same_origin("http://127.0.0.1:7860", "127.0.0.1:7860")
    assert not same_origin("http://127.0.0.1:7861", "127.0.0.1:7860")
    assert not same_origin("http://workbench.example.attacker.example", "workbench.example")


def test_websockets_get_the_same_host_and_origin_checks():
    """Gradio 6 streams over SSE (plain HTTP, checked above); a websocket route, should one be
    added, is refused the same way: closed before it is accepted (the handshake gets 403)."""
    import asyncio

    from workbench.ui.serving import HostPolicy, RequestGuard

    reached = []

    async def app(scope, receive, send):
        reached.append(scope["type"])

    guard = RequestGuard(app, HostPolicy.for_bind("127.0.0.1"), max_upload_bytes=1024)

    def handshake(headers):
        sent = []

        async def receive():
            return {"type": "websocket.connect"}

        async def send(message):
            sent.append(message)

        scope = {"type": "websocket", "path": "/ws", "headers": [(k.encode(), v.encode()) for k, v in headers.items()]}
        asyncio.run(guard(scope, receive, send))
        return sent

    assert handshake({"host": "rebind.attacker.example:7860", "origin": "http://rebind.attacker.example:7860"}) == \
        [{"type": "websocket.close", "code": 1008}]
    assert handshake({"host": "127.0.0.1:7860", "origin": "http://attacker.example"}) == \
        [{"type": "websocket.close", "code": 1008}]
    assert reached == []
    assert handshake({"host": "127.0.0.1:7860", "origin": "http://127.0.0.1:7860"}) == [] and reached == ["websocket"]
