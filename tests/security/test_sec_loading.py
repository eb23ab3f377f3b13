"""Model and data loading under hostile input: pickles, remote code, template escapes,
shell text in names, upload names as paths. Plus a scan of our own source for the calls
that must never appear."""

import json
import pickle
import re
import shutil
from pathlib import Path

import pytest

from workbench.errors import UnknownModelError, WorkbenchError

SOURCE = Path(__file__).resolve().parents[2]
OUR_FILES = sorted((SOURCE / "workbench").rglob("*.py")) + [SOURCE / "app.py"] + sorted((SOURCE / "bench").glob("*.py"))


def _calls(pattern: str):
    """(file, call text up to its closing parenthesis) of every call matching ``pattern``."""
    for path in OUR_FILES:
        text = path.read_text()
        for m in re.finditer(pattern, text):
            depth, i = 0, m.end() - 1
            while i < len(text):
                depth += {"(": 1, ")": -1}.get(text[i], 0)
                if depth == 0:
                    break
                i += 1
            yield path.relative_to(SOURCE), text[m.start(): i + 1]


def test_source_never_enables_remote_code_pickles_or_shells():
    auto = list(_calls(r"Auto\w+\.from_pretrained\("))
    assert len(auto) >= 4
    for where, call in auto:
        assert "trust_remote_code=False" in call, (where, call)
        if "ForCausalLM" in call:  # safetensors, or the verified GGUF file of the default model (no pickle)
            assert "use_safetensors=True" in call or "gguf_file=" in call, (where, call)
    for where, call in _calls(r"torch\.load\("):
        assert "weights_only=True" in call, (where, call)
    for path in OUR_FILES:
        text = path.read_text()
        for forbidden in ("trust_remote_code=True", "shell=True", "os.system(", "os.popen(", "pickle.load",
                          "subprocess.getoutput", "subprocess.getstatusoutput"):
            assert forbidden not in text, (path, forbidden)
        assert not re.search(r"(?<![.\w])(eval|exec)\(", text), path  # builtins; model.eval() is fine
    popens = list(_calls(r"subprocess\.(Popen|run|call|check_call|check_output)\("))
    # argument lists only: a list literal, or launch_command() (tested to return one in test_multi_gpu.py)
    assert popens and all(re.match(r"subprocess\.\w+\(\s*(\[|launch_command\()", call) for _, call in popens), \
        [(str(w), c[:80]) for w, c in popens if not re.match(r"subprocess\.\w+\(\s*(\[|launch_command\()", c)]


def test_pinned_versions_carry_the_advisory_fixes():
    text = (SOURCE / "pyproject.toml").read_text()
    for requirement in ("torch>=2.6", "pyarrow>=14.0.1", "transformers>=5.0", "gradio>=6.16"):
        assert f'"{requirement}' in text, requirement


class _Payload:
    """Unpickling this writes a marker file: proof that a pickle ran code."""

    marker = ""

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "pwned"))


@pytest.fixture
def roots(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_MODEL_ROOTS", str(tmp_path))
    return tmp_path


def _tiny_copy(folder: Path) -> Path:
    from workbench.tiny import ensure_tiny

    shutil.copytree(ensure_tiny(), folder)
    return folder


def test_a_pickle_checkpoint_is_refused_and_never_unpickled(roots):
    from workbench.chat import ChatEngine, Sampling
    from workbench.loading import load_for_training
    from workbench.memory import TrainingSettings
    from workbench.methods import get_method
    from workbench.specs import load_model_spec

    folder = _tiny_copy(roots / "evil-model")
    for f in folder.glob("*.safetensors"):
        f.unlink()
    marker = roots / "PWNED"
    payload = _Payload()
    payload.marker = str(marker)
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps({"model.embed_tokens.weight": payload}))
    spec = load_model_spec(str(folder))
    with pytest.raises(UnknownModelError, match="no .safetensors weights.*pytorch_model.bin: pickle files are never"):
        load_for_training(spec, get_method("lora"), {}, TrainingSettings(device="cpu", dtype="float32"))
    with pytest.raises(WorkbenchError, match="no .safetensors"):
        ChatEngine(str(folder)).answer("hi", "base", Sampling(max_new_tokens=2))
    assert not marker.exists()


def test_remote_code_in_a_model_folder_never_runs(roots):
    from workbench.ui.plan_tab import plan_view

    folder = roots / "custom-arch"
    folder.mkdir()
    marker = roots / "PWNED"
    (folder / "modeling_evil.py").write_text(f"open({str(marker)!r}, 'w').write('pwned')\n")
    (folder / "configuration_evil.py").write_text(f"open({str(marker)!r}, 'w').write('pwned')\n")
    (folder / "config.json").write_text(json.dumps({
        "model_type": "evil", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 100,
        "auto_map": {"AutoConfig": "configuration_evil.EvilConfig", "AutoModelForCausalLM": "modeling_evil.EvilModel"}}))
    summary, figure, rows = plan_view(str(folder), "lora", "bfloat16", "auto", 1, 64, 1, False, "adamw", "cuda")
    assert summary.startswith("**Cannot plan:**") and "model_type 'evil'" in summary and not rows
    from workbench.data import load_tokenizer

    with pytest.raises(WorkbenchError):
        load_tokenizer(str(folder))
    assert not marker.exists()


ESCAPES = [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__.os.system('touch MARKER') }}",
    "{% for m in messages %}{{ m.__class__.__init__.__globals__ }}{% endfor %}",
    "{{ self._TemplateReference__context.joiner.__init__.__globals__.os.popen('touch MARKER').read() }}",
]


@pytest.mark.parametrize("template", ESCAPES)
def test_a_chat_template_reaching_for_python_fails_cleanly(roots, template, monkeypatch):
    from workbench.chat import ChatEngine, Sampling
    from workbench.ui.data_tab import inspect_view

    monkeypatch.chdir(roots)
    folder = _tiny_copy(roots / "templated")
    template = template.replace("MARKER", str(roots / "PWNED"))
    (folder / "chat_template.jinja").write_text(template)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    data = roots / "chat.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"},
                                             {"role": "assistant", "content": "hello"}]}) + "\n")
    summary, *_ = inspect_view(str(data), str(folder), "auto", "", None, 0, False)
    assert summary.startswith("**Cannot use this file:**") and "chat template failed" in summary, summary
    with pytest.raises(WorkbenchError, match="chat template failed"):
        ChatEngine(str(folder)).answer("hi", "base", Sampling(max_new_tokens=2))
    assert not (roots / "PWNED").exists()


def test_shell_text_in_names_never_reaches_a_command_line(tmp_path, monkeypatch):
    from workbench.training import launcher

    monkeypatch.setenv("WORKBENCH_SESSIONS", str(tmp_path / "sessions"))
    monkeypatch.chdir(tmp_path)
    hostile = tmp_path / "$(touch PWNED); `id` & rm -rf ~ ; ..%2F.jsonl"
    hostile.write_text(json.dumps({"prompt": "a", "completion": "b"}) + "\n")
    seen = {}

    class FakePopen:
        pid = 2**22 + 1

        def __init__(self, args, **kwargs):
            seen["args"], seen["kwargs"] = args, kwargs

    monkeypatch.setattr(launcher.subprocess, "Popen", FakePopen)
    job = launcher.make_job("tiny", "lora", str(hostile), name=hostile.name)
    sid, _ = launcher.start(job)
    folder = tmp_path / "sessions" / sid
    args = seen["args"]
    assert isinstance(args, list) and not seen["kwargs"].get("shell")
    assert args[1:] == ["-m", "workbench.training.worker", str(folder / "job.json")]
    assert sorted(p.name for p in folder.iterdir()) == ["dataset.jsonl", "events.jsonl", "job.json", "plan.json",
                                                        "worker.log", "worker.pid"]
    assert json.loads((folder / "job.json").read_text())["run"]["data"]["name"] == hostile.name  # kept as text, shown escaped
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize("name", ["../../escape.jsonl", "/etc/cron.d/x.jsonl", "a\\..\\..\\b.jsonl", "nul\x00.jsonl",
                                  "CON.jsonl", ".hidden.jsonl", "x" * 300 + ".jsonl"])
def test_upload_names_are_display_text_never_paths(tmp_path, monkeypatch, name):
    """gradio keeps an upload under its own cache folder; we copy it to ``dataset<suffix>``
    and keep the name only to show it."""
    from workbench.training.launcher import make_job, prepare
    from workbench.ui.views import safe_upload_name

    monkeypatch.setenv("WORKBENCH_SESSIONS", str(tmp_path / "sessions"))
    data = tmp_path / "upload.jsonl"
    data.write_text(json.dumps({"prompt": "a", "completion": "b"}) + "\n")
    shown = safe_upload_name(name)
    assert "/" not in shown
    sid = prepare(make_job("tiny", "lora", str(data), name=name))
    folder = tmp_path / "sessions" / sid
    assert (folder / "dataset.jsonl").is_file()
    assert sorted(p.name for p in (tmp_path / "sessions").iterdir()) == [sid]
    assert not (tmp_path / "escape.jsonl").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["sessions",
                                                                                                       "upload.jsonl"]


def test_url_and_outside_model_names_are_refused_before_loading(tmp_path, monkeypatch):
    from workbench.safety import check_model_name

    monkeypatch.setenv("WORKBENCH_MODEL_ROOTS", str(tmp_path / "models"))
    (tmp_path / "models" / "mine").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "models" / "link-out").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    assert check_model_name(str(tmp_path / "models" / "mine")) == str(tmp_path / "models" / "mine")
    assert check_model_name("tiny") == "tiny" and check_model_name("Qwen/Qwen2.5-0.5B") == "Qwen/Qwen2.5-0.5B"
    assert check_model_name("someorg/some-model_v1.5") == "someorg/some-model_v1.5"
    for bad in ["http://example.com/m", "https://huggingface.co/org/m", "file:///etc", "hf://org/m", "//host/share",
                str(tmp_path / "elsewhere"), str(tmp_path / "models" / "link-out"), str(tmp_path / "models" / ".." /
                                                                                         "elsewhere"),
                "/", "~", "../../..", "org/../../etc", "org/name/extra", "", " ", "a" * 1000, "org/na\nme", "-rf/x"]:
        with pytest.raises(UnknownModelError):
            check_model_name(bad)
