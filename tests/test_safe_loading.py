"""Safe loading: no pickle from files a user does not control, no shell command strings, and a
checkpoint's own Python code runs only when the user asks (``--trust-remote-code``, the
``trust_remote_code`` parameter of the LLM methods), with the choice recorded.

The static check (``tests/static_safety.py``) parses the whole source tree; it is tested here on
snippets of every forbidden pattern, so it cannot pass by seeing nothing.
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from bench.errors import BenchError
from tests.static_safety import scan_source, scan_tree

ROOT = Path(__file__).resolve().parent.parent
TEXT = "text-prefs:users=8,pairs=6,features=none"


# ---------------------------------------------------------------------------- the static check


def test_source_tree_passes_the_static_safety_check():
    found, n_files = scan_tree(ROOT)
    assert n_files > 50  # bench/, methods/, reports/, benchmarks/ were read
    assert not found, "unsafe patterns:\n" + "\n".join(map(str, found))


UNSAFE = [
    ("import pickle\nx = pickle.load(f)", "unsafe-import"),
    ("import cloudpickle as cp", "unsafe-import"),
    ("from joblib import load", "unsafe-import"),
    ("import marshal", "unsafe-import"),
    ("import torch\nsd = torch.load(p)", "torch-load"),
    ("import torch\nsd = torch.load(p, weights_only=False)", "torch-load"),
    ("import numpy as np\na = np.load(p)", "np-load"),
    ("import numpy\na = numpy.load(p, allow_pickle=True)", "np-load"),
    ("import numpy as np\nnp.save(p, a, allow_pickle=True)", "allow-pickle"),
    ("import numpy as np\nnp.load(p, allow_pickle=flag)", "allow-pickle"),
    ("import pandas as pd\ndf = pd.read_pickle(p)", "pickle-reader"),
    ("df = frame.read_hdf(p)", "pickle-reader"),
    ("import yaml\ncfg = yaml.load(text)", "yaml-load"),
    ("import yaml\ncfg = yaml.load(text, Loader=yaml.UnsafeLoader)", "yaml-load"),
    ("import yaml\ncfg = yaml.full_load(text)", "yaml-load"),
    ("from yaml import unsafe_load", "yaml-load"),
    ("x = eval(s)", "eval"),
    ("exec(code)", "eval"),
    ("m = __import__(name)", "eval"),
    ("import subprocess\nsubprocess.run(cmd, shell=True)", "shell"),
    ("import subprocess\nsubprocess.run(f'git log {ref}')", "shell"),
    ("import subprocess as sp\nsp.check_output('ls ' + d)", "shell"),
    ("import os\nos.system(cmd)", "shell"),
    ("from os import popen", "shell"),
    ("import subprocess\nsubprocess.getoutput(cmd)", "shell"),
    ("from transformers import AutoModel\nm = AutoModel.from_pretrained(p)", "remote-code"),
    ("from transformers import AutoTokenizer\nt = AutoTokenizer.from_pretrained(p, trust_remote_code=True)", "remote-code"),
    ("from vllm import LLM\nllm = LLM(model=m)", "remote-code"),
    ("import vllm\nllm = vllm.LLM(model=m, **kw)", "remote-code"),
    ("from sentence_transformers import SentenceTransformer\ne = SentenceTransformer(name)", "remote-code"),
]


@pytest.mark.parametrize(("code", "rule"), UNSAFE, ids=[f"{r}-{i}" for i, (_, r) in enumerate(UNSAFE)])
def test_the_check_catches_each_forbidden_pattern(code, rule):
    rules = {f.rule for f in scan_source(code, "snippet.py")}
    assert rule in rules, f"{code!r} not caught (found {rules})"


SAFE = [
    "import numpy as np\na = np.load(p, mmap_mode='r', allow_pickle=False)\nnp.save(p, a, allow_pickle=False)",
    "import torch\nsd = torch.load(p, weights_only=True)",
    "import yaml\ncfg = yaml.safe_load(text)",
    "import subprocess\nsubprocess.run(['git', '-C', str(here), 'rev-parse', 'HEAD'], check=False)",
    "from transformers import AutoModel\nm = AutoModel.from_pretrained(p, trust_remote_code=flag)",
    "import vllm\nllm = vllm.LLM(model=m, trust_remote_code=False, **kw)",
    "# pickle.load(f) and yaml.load(t) in a comment\nx = 'np.load(p) in a string'",
    "import json\ndata = json.loads(text)\nm = __import__('pandas')",
]


@pytest.mark.parametrize("code", SAFE)
def test_the_check_accepts_safe_code(code):
    assert scan_source(code, "snippet.py") == []


# ---------------------------------------------------------------------------- checkpoints with code


def _tokenizer():
    from bench.llm.models import tiny_tokenizer

    tok = tiny_tokenizer()
    tok.chat_template = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"
    return tok


@pytest.fixture
def code_checkpoint(tmp_path, monkeypatch):
    """A model directory whose config names its own Python code (auto_map); importing that code
    writes a marker file. Transformers' copy of the code goes to a temporary modules cache."""
    pytest.importorskip("transformers")
    import transformers.dynamic_module_utils as dmu

    monkeypatch.setattr(dmu, "HF_MODULES_CACHE", str(tmp_path / "hf-modules"))
    d = tmp_path / "evil-model"
    d.mkdir()
    _tokenizer().save_pretrained(d)
    marker = tmp_path / "code-ran"
    body = f"open({str(marker)!r}, 'w').write('ran')\nfrom transformers import PretrainedConfig\n\n\nclass EvilConfig(PretrainedConfig):\n    model_type = 'evil-rm'\n"
    (d / "configuration_evil.py").write_text(body)
    (d / "modeling_evil.py").write_text(body)
    auto = {k: "modeling_evil.EvilModel" for k in ("AutoModel", "AutoModelForCausalLM", "AutoModelForSequenceClassification")}
    (d / "config.json").write_text(json.dumps({"model_type": "evil-rm", "auto_map": {"AutoConfig": "configuration_evil.EvilConfig", **auto}}))
    return d, marker


def _refused_then_allowed(load, marker, hint):
    with pytest.raises(BenchError) as e:
        load(False)
    assert "ships its own Python code" in e.value.message and hint in e.value.hint
    assert not marker.exists(), "the checkpoint's code ran although trust_remote_code was off"
    with pytest.raises(Exception):  # noqa: B017 - the fake code defines no model; what matters is that it ran
        load(True)
    assert marker.exists(), "trust_remote_code=True did not reach the loader"


def test_embed_encoder_runs_checkpoint_code_only_when_asked(code_checkpoint):
    from bench.features.encoders import HFEncoder

    d, marker = code_checkpoint
    _refused_then_allowed(lambda trc: HFEncoder(str(d), trust_remote_code=trc), marker, "--trust-remote-code")


def test_llm_backend_runs_checkpoint_code_only_when_asked(code_checkpoint):
    from bench.llm.hf_backend import HFBackend

    d, marker = code_checkpoint
    _refused_then_allowed(lambda trc: HFBackend(str(d), trust_remote_code=trc), marker, "trust_remote_code=true")


def test_synthesizeme_ft_reward_model_runs_checkpoint_code_only_when_asked(code_checkpoint):
    from bench.datasets import load_dataset
    from bench.methods.synthesizeme.ft import SynthesizeMeFT
    from bench.runner import make_context

    d, marker = code_checkpoint
    ctx = make_context(load_dataset(TEXT), 0)
    _refused_then_allowed(lambda trc: SynthesizeMeFT(rm_model=str(d), trust_remote_code=trc)._build_rm(ctx), marker,
                          "synthesizeme-ft.trust_remote_code=true")


def test_embed_records_the_choice_in_the_features_manifest(tmp_path, monkeypatch):
    """A plain local reward model loads with trust_remote_code off; the manifest says so."""
    pytest.importorskip("transformers")
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from bench.commands.embed import load_text_dataset
    from bench.features.encoders import HFEncoder
    from bench.features.extract import extract_features

    monkeypatch.setenv("BENCH_CACHE", str(tmp_path / "cache"))
    tok = _tokenizer()
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=1, num_labels=1, pad_token_id=tok.pad_token_id)
    d = tmp_path / "tiny-rm"
    LlamaForSequenceClassification(cfg).save_pretrained(d)
    tok.save_pretrained(d)
    ds = load_text_dataset(TEXT)
    for trc in (False, True):
        enc = HFEncoder(str(d), device="cpu", dtype="float32", trust_remote_code=trc)
        assert enc.trust_remote_code is trc
        rep = extract_features(ds, enc, chunk_size=64, batch_tokens=4096, check_samples=1, force=True, log=lambda m: None)
        man = json.loads((Path(rep["directory"]) / "manifest.json").read_text())
        assert man["trust_remote_code"] is trc


@pytest.mark.parametrize("flag", [[], ["--trust-remote-code"]])
@pytest.mark.parametrize("parallel", [[], ["--data-parallel", "2"]])
def test_embed_flag_reaches_the_loader(cli, monkeypatch, flag, parallel):
    import bench.features.encoders as encoders
    import bench.features.parallel as parallel_mod

    seen = {}

    def stop(*a, **kw):
        seen.update(kw if "trust_remote_code" in kw else a[1])  # load_encoder(**kw) or extract_parallel(spec, model, …)
        raise BenchError("stopped by the test")

    monkeypatch.setattr(encoders, "load_encoder", stop)
    monkeypatch.setattr(parallel_mod, "extract_parallel", stop)
    code, out, err = cli("embed", "--dataset", TEXT, "--model", "some/model", "--device", "cpu", *flag, *parallel)
    assert code == 2 and "stopped by the test" in err
    assert seen["trust_remote_code"] is bool(flag)


def test_load_encoder_passes_the_flag_to_either_backend(monkeypatch):
    import bench.features.encoders as encoders

    got = []
    monkeypatch.setattr(encoders, "HFEncoder", lambda name, **kw: got.append(("hf", kw)))
    monkeypatch.setattr(encoders, "VLLMEncoder", lambda name, **kw: got.append(("vllm", kw)))
    encoders.load_encoder("m", backend="transformers", trust_remote_code=True, device="cpu")
    encoders.load_encoder("m", backend="vllm", trust_remote_code=True)
    assert [(b, kw["trust_remote_code"]) for b, kw in got] == [("hf", True), ("vllm", True)]


def _fake_vllm(monkeypatch, calls):
    import dataclasses

    class LLM:  # today's spelling: runner/convert + pooler_config (bench.llm.vllm_compat reads it)
        def __init__(self, model, *, runner="auto", convert="auto", pooler_config=None, trust_remote_code=False, **kw):
            calls.append(dict(kw, model=model, runner=runner, convert=convert, pooler_config=pooler_config, trust_remote_code=trust_remote_code))

        def get_tokenizer(self):
            return _tokenizer()

    @dataclasses.dataclass
    class PoolerConfig:
        pooling_type: str | None = None
        use_activation: bool | None = None

    vllm = types.ModuleType("vllm")
    vllm.LLM = LLM
    vllm.__version__ = "0.0-test"
    config = types.ModuleType("vllm.config")
    config.PoolerConfig = PoolerConfig
    vllm.config = config
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    monkeypatch.setitem(sys.modules, "vllm.config", config)


@pytest.mark.parametrize("trc", [False, True])
def test_vllm_paths_pass_the_flag(monkeypatch, tmp_path, trc):
    pytest.importorskip("transformers")
    import torch

    import bench.features.encoders as encoders
    from bench.llm.vllm_backend import VLLMBackend

    calls: list[dict] = []
    _fake_vllm(monkeypatch, calls)
    be = VLLMBackend("some/model", trust_remote_code=trc)
    assert calls[-1]["trust_remote_code"] is trc and be.describe()["trust_remote_code"] is trc
    be = VLLMBackend("some/model")
    assert calls[-1]["trust_remote_code"] is False

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(encoders, "_score_head_from_checkpoint", lambda *a: np.zeros(8, dtype=np.float32))
    import transformers

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda *a, **kw: _tokenizer())
    (tmp_path / "m").mkdir()
    enc = encoders.VLLMEncoder(str(tmp_path / "m"), trust_remote_code=trc)
    assert calls[-1]["trust_remote_code"] is trc and enc.trust_remote_code is trc


def test_synthesizeme_parameter_reaches_the_engine_and_is_recorded(monkeypatch):
    import bench.llm as llm
    from bench.datasets import load_dataset
    from bench.methods.synthesizeme import SynthesizeMe
    from bench.runner import run_single

    real = llm.make_engine
    seen: list[dict] = []

    def capture(backend, model, **kw):
        seen.append({"backend": backend, **kw})
        return real("scripted", "hash", cache=False)

    monkeypatch.setattr(llm, "make_engine", capture)
    ds = load_dataset(TEXT)
    for trc in (False, True):
        m = SynthesizeMe(backend="transformers", model="some/model", cache=False, trust_remote_code=trc)
        run_single(m, ds, seed=0)
        assert seen[-1]["trust_remote_code"] is trc
        assert m.get_params()["trust_remote_code"] is trc  # a parameter: part of the cell key and its rows
    run_single(SynthesizeMe(backend="scripted", model="hash", cache=False), ds, seed=0)
    assert "trust_remote_code" not in seen[-1]  # backends that load no checkpoint get no such option
    with pytest.raises(BenchError, match="parameter of the method"):
        run_single(SynthesizeMe(backend="transformers", model="m", cache=False, engine_options={"trust_remote_code": True}), ds, seed=0)


def test_llm_engine_describes_the_choice():
    from bench.llm import make_backend

    be = make_backend("transformers", "some/model", trust_remote_code=True)  # lazy: nothing is loaded
    assert be.describe()["trust_remote_code"] is True
