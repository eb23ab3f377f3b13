"""Exports stay private (issue 15, finding 8): an adapter or merged-model export is written into
its run's folder and handed out by the export route to the run's owner only -- never copied
into gradio's shared temporary folder, which is private to each server process -- and exports
older than the maximum age are removed."""

import io
import json
import os
import stat
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

import pytest

from conftest import running_app

SECRET = b"alice's adapter weights"


def _get(url: str, cookie: str | None = None) -> tuple[int, bytes, dict]:
    req = urllib.request.Request(url, headers={"Cookie": cookie} if cookie else {})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)


def _login(base: str, user: str, password: str) -> str:
    body = urllib.parse.urlencode({"username": user, "password": password}).encode()
    with urllib.request.urlopen(urllib.request.Request(f"{base}login", body), timeout=30) as r:
        cookies = [c.split(";", 1)[0] for c in r.headers.get_all("Set-Cookie")]
    return "; ".join(cookies)


def _upload(base: str, path: Path, cookie: str | None = None) -> str:
    boundary = "----exportsboundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{path.name}\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + path.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}", **({"Cookie": cookie} if cookie else {})}
    with urllib.request.urlopen(urllib.request.Request(f"{base}gradio_api/upload", body, headers), timeout=60) as r:
        return json.loads(r.read())[0]


def _click(base: str, cookie: str, button: str, data: list, session_hash: str) -> list:
    """Press a button of the page over raw HTTP, as the browser does (queue/join + queue/data):
    the outputs of the event bound to the button labelled ``button``."""
    headers = {"Cookie": cookie, "Content-Type": "application/json"}
    config = json.loads(_get(f"{base}config", cookie)[1])
    labels = {c["id"]: c.get("props", {}).get("value") for c in config["components"]}
    dep = next(d for d in config["dependencies"] if any(labels.get(t) == button for t, _ in d["targets"]))
    body = json.dumps({"data": data, "fn_index": dep["id"], "session_hash": session_hash, "event_data": None,
                       "trigger_id": dep["targets"][0][0]}).encode()
    with urllib.request.urlopen(urllib.request.Request(f"{base}gradio_api/queue/join", body, headers), timeout=30):
        pass
    req = urllib.request.Request(f"{base}gradio_api/queue/data?session_hash={session_hash}", headers=headers)
    deadline = time.time() + 300
    with urllib.request.urlopen(req, timeout=300) as stream:
        for line in stream:
            if time.time() > deadline:
                break
            if line.startswith(b"data:"):
                message = json.loads(line[5:])
                if message.get("msg") == "process_completed":
                    return message["output"].get("data") or [message["output"].get("error")]
    raise AssertionError(f"{button}: no completion")


def _finished_run(owner: str | None) -> str:
    """A run of ``owner`` in the store with a finished (hand-made) result, ready to export."""
    from workbench.sessions import session_path
    from workbench.training.events import EventWriter
    from workbench.training.launcher import make_job, prepare

    data = Path(os.environ["WORKBENCH_SESSIONS"]).parent / "qa.jsonl"
    data.write_text("\n".join(json.dumps({"prompt": f"Q{i}?", "completion": f"A{i}."}) for i in range(8)))
    sid = prepare(make_job("tiny", "lora", str(data)), owner=owner)
    final = session_path(sid) / "final"
    final.mkdir()
    (final / "adapter_model.safetensors").write_bytes(SECRET)
    (final / "workbench_meta.json").write_text(json.dumps({"kind": "adapter", "method": "lora"}))
    (final / "COMPLETE").write_text("{}")
    events = EventWriter(session_path(sid) / "events.jsonl")
    events.status("completed")  # not waiting in the run queue any more
    events.close()
    return sid


@pytest.fixture(scope="module")
def signed_in(tmp_path_factory):
    folder = tmp_path_factory.mktemp("exports-server")
    with running_app(folder, "--auth", "alice:alice-pw", "--auth", "bob:bob-pw", env={"GRADIO_TEMP_DIR": ""}) as url:
        yield {"url": url, "folder": folder, "alice": _login(url, "alice", "alice-pw"), "bob": _login(url, "bob", "bob-pw")}


@pytest.fixture
def store(signed_in, monkeypatch):
    monkeypatch.setenv("WORKBENCH_SESSIONS", str(signed_in["folder"] / "sessions"))
    return signed_in


def test_an_export_is_served_to_its_owner_only(store):
    """Finding 8: another signed-in user fetched an export by URL. Now: alice gets her export
    by the route; bob, a visitor who is not signed in, and gradio's file route do not."""
    from workbench.exports import export_run

    sid = _finished_run("alice")
    path = export_run(sid, "zip", "alice")
    assert path.parent == Path(os.environ["WORKBENCH_SESSIONS"]) / sid / "exports"
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    url = f"{store['url']}export/{sid}/{path.name}"
    status, body, headers = _get(url, store["alice"])
    assert status == 200 and "attachment" in headers["content-disposition"] and headers["cache-control"].startswith("private")
    assert SECRET in zipfile.ZipFile(io.BytesIO(body)).read(f"{sid}/adapter_model.safetensors")
    for cookie, expected in ((store["bob"], 404), (None, 401), ("access-token-x=forged", 401)):
        status, body, _ = _get(url, cookie)
        assert status == expected and SECRET not in body, (cookie, status)
    assert _get(f"{store['url']}export/{sid}/{sid}-merged.zip", store["alice"])[0] == 404  # not exported
    assert _get(f"{store['url']}export/{sid}/..%2Fjob.json", store["alice"])[0] == 404
    for cookie in (store["alice"], store["bob"]):  # the store is no gradio file, even for the owner
        assert _get(f"{store['url']}gradio_api/file={path}", cookie)[0] == 403


def test_the_runs_tab_links_the_export_and_copies_nothing_to_gradio(store):
    """The Runs tab's Adapter zip button answers a link to the export route; before, it handed
    the zip to a gr.File, which copied it into gradio's (shared) temporary folder."""
    sid = _finished_run("alice")
    _click(store["url"], store["alice"], "Refresh", [], "alicepage")  # the page lists alice's runs first
    message, link = _click(store["url"], store["alice"], "Adapter zip", [sid], "alicepage")
    assert "adapter zip ready" in message and f'href="export/{sid}/{sid}-adapter.zip"' in link
    assert _get(store["url"] + f"export/{sid}/{sid}-adapter.zip", store["alice"])[0] == 200
    temp = [p for p in Path(tempfile.gettempdir()).glob("peft-workbench-gradio-*") if p.stat().st_uid == os.getuid()]
    assert not [p for folder in temp for p in folder.rglob("*.zip")]  # no export in any gradio temp folder
    _click(store["url"], store["bob"], "Refresh", [], "bobpage")
    answer = _click(store["url"], store["bob"], "Adapter zip", [sid], "bobpage")  # not among bob's runs
    assert "export/" not in json.dumps(answer) and "ready" not in json.dumps(answer), answer


def test_a_second_server_does_not_serve_the_first_ones_files(store, tmp_path):
    """Finding 8: a second, unauthenticated server on the same machine served an upload of the
    first. Each server now has its own private gradio folder (mode 0700), gone when it stops."""
    data = tmp_path / "private.jsonl"
    data.write_text('{"prompt": "private", "completion": "upload"}\n')
    uploaded = Path(_upload(store["url"], data, store["alice"]))
    assert _get(f"{store['url']}gradio_api/file={uploaded}", store["alice"])[0] == 200  # the control
    with running_app(tmp_path, env={"GRADIO_TEMP_DIR": ""}) as other:
        status, body, _ = _get(f"{other}gradio_api/file={uploaded}")
        assert status == 403 and b"upload\"}" not in body
        mine = Path(_upload(other, data))
    folder = next(p for p in uploaded.parents if p.name.startswith("peft-workbench-gradio-"))
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700 and not mine.is_relative_to(folder)
    assert not next(p for p in mine.parents if p.name.startswith("peft-workbench-gradio-")).exists()  # removed


def test_exports_are_replaced_and_expire(store, monkeypatch):
    """8 exports of a run leave one file; exports older than the maximum age are removed (at
    the next export, at start and periodically) and are no longer served."""
    from workbench.exports import cleanup_exports, export_file, export_run
    from workbench.errors import WorkbenchError

    sid = _finished_run("alice")
    for _ in range(8):
        path = export_run(sid, "zip", "alice")
    exports = path.parent
    assert [p.name for p in exports.iterdir()] == [path.name]
    size, old = path.stat().st_size, time.time() - 25 * 3600
    os.utime(path, (old, old))
    stale = exports / ".partial-crashed"  # an export whose server died while writing it
    stale.mkdir()
    (stale / "half.safetensors").write_bytes(b"x" * 1000)
    os.utime(stale, (old, old))
    with pytest.raises(WorkbenchError, match="no export"):
        export_file(sid, path.name, "alice")  # expired: not served even before the cleanup ran
    assert _get(f"{store['url']}export/{sid}/{path.name}", store["alice"])[0] == 404
    assert cleanup_exports() == size + 1000 and list(exports.iterdir()) == []
    monkeypatch.setenv("WORKBENCH_EXPORT_MAX_AGE_HOURS", "0.001")  # 3.6 s
    fresh = export_run(sid, "zip", "alice")
    assert cleanup_exports() == 0 and fresh.exists()
    size = fresh.stat().st_size
    assert cleanup_exports(now=time.time() + 10) == size and not fresh.exists()


@pytest.mark.parametrize("user", ["alice", "bob", None])
def test_export_route_names_nothing_else(store, user):
    """Only ``<id>-adapter.zip``/``<id>-merged.zip`` of a visible run, once exported: no other
    file of the run, for its owner either (None: a server without sign-in)."""
    from workbench.exports import export_file
    from workbench.errors import WorkbenchError

    sid = _finished_run("alice")
    for name in ("job.json", "../job.json", f"{sid}-adapter.zip", "final/adapter_model.safetensors"):
        with pytest.raises(WorkbenchError, match="no export"):
            export_file(sid, name, user)
