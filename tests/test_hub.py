import hashlib
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from tiny_models import tiny_cllm4rec_config, tiny_model, tiny_word_tokenizer
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from hf_cllm4rec import (
    CLLM4RecConfig,
    CLLM4RecForCollaborativeLM,
    CLLM4RecModel,
    CLLM4RecTokenizer,
)

INPUT_IDS = torch.tensor([[100, 5, 6, 7, 104, 110, 108], [102, 5, 6, 7, 109, 0, 0]])
ATTENTION_MASK = torch.tensor([[1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0, 0]])

# Run first in a subprocess: makes `hf_cllm4rec` unimportable, and proves it.
HIDE_PACKAGE = """
import importlib.abc
import sys


class HidePackage(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] == "hf_cllm4rec":
            raise ModuleNotFoundError(f"No module named {name!r} (hidden)")
        return None


sys.meta_path.insert(0, HidePackage())
try:
    import hf_cllm4rec  # noqa: F401
except ImportError:
    pass
else:
    raise SystemExit("hf_cllm4rec is importable: the test would prove nothing")
"""


def run_python(code: str, cwd, **env_overrides) -> str:
    """Runs `code` in a fresh interpreter, from `cwd`, with no Hub access; returns stdout, fails on error."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("HF_", "HUGGINGFACE_", "TRANSFORMERS_")) and key != "PYTHONPATH"
    }
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(cwd / "hf-home"), OMP_NUM_THREADS="1", **env_overrides)
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, f"stdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-5000:]}"
    return result.stdout


def reference_outputs(model, path):
    """Saves the model's outputs on the fixed batch next to its checkpoint, for a subprocess to compare with."""
    with torch.no_grad():
        output = model(INPUT_IDS, ATTENTION_MASK)
    tensor = output.logits if isinstance(model, CLLM4RecForCollaborativeLM) else output.last_hidden_state
    torch.save({"input_ids": INPUT_IDS, "attention_mask": ATTENTION_MASK, "expected": tensor}, path)
    return tensor


def test_auto_classes_resolve_cllm4rec(tmp_path):
    config = tiny_cllm4rec_config()
    assert isinstance(AutoConfig.for_model("cllm4rec", num_users=5, num_items=7), CLLM4RecConfig)
    assert type(AutoModel.from_config(config)) is CLLM4RecModel
    assert type(AutoModelForCausalLM.from_config(config)) is CLLM4RecForCollaborativeLM

    model = tiny_model(CLLM4RecForCollaborativeLM, id_std=1.0)
    model.save_pretrained(tmp_path)
    assert not (tmp_path / "modeling_cllm4rec.py").exists()  # no remote code unless asked for
    assert type(AutoConfig.from_pretrained(tmp_path)) is CLLM4RecConfig
    causal_lm = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(causal_lm) is CLLM4RecForCollaborativeLM
    base = AutoModel.from_pretrained(tmp_path).eval()
    assert type(base) is CLLM4RecModel
    with torch.no_grad():
        expected = model(INPUT_IDS, ATTENTION_MASK)
        torch.testing.assert_close(causal_lm(INPUT_IDS, ATTENTION_MASK).logits, expected.logits)
        torch.testing.assert_close(base(INPUT_IDS, ATTENTION_MASK).last_hidden_state, expected.last_hidden_state)


@pytest.fixture
def registered_for_auto_classes(monkeypatch):
    """`register_for_auto_class` as a Hub user would call it, undone after the test (it sets class attributes)."""
    for cls in (CLLM4RecConfig, CLLM4RecModel, CLLM4RecForCollaborativeLM):
        monkeypatch.setattr(cls, "_auto_class", None)
    CLLM4RecConfig.register_for_auto_class("AutoConfig")
    CLLM4RecModel.register_for_auto_class("AutoModel")
    CLLM4RecForCollaborativeLM.register_for_auto_class("AutoModelForCausalLM")


def test_remote_code_checkpoint_loads_without_the_package(registered_for_auto_classes, tmp_path):
    checkpoints = {"causal_lm": CLLM4RecForCollaborativeLM, "base": CLLM4RecModel}
    for name, model_class in checkpoints.items():
        model = tiny_model(model_class, "llama", id_std=1.0)
        model.save_pretrained(tmp_path / name)
        reference_outputs(model, tmp_path / f"{name}.pt")
        files = {path.name for path in (tmp_path / name).iterdir()}
        assert {"configuration_cllm4rec.py", "modeling_cllm4rec.py", "config.json", "model.safetensors"} <= files
        auto_map = json.loads((tmp_path / name / "config.json").read_text())["auto_map"]
        assert auto_map["AutoConfig"] == "configuration_cllm4rec.CLLM4RecConfig"
    assert json.loads((tmp_path / "causal_lm" / "config.json").read_text())["auto_map"]["AutoModelForCausalLM"] == (
        "modeling_cllm4rec.CLLM4RecForCollaborativeLM"
    )
    assert json.loads((tmp_path / "base" / "config.json").read_text())["auto_map"]["AutoModel"] == (
        "modeling_cllm4rec.CLLM4RecModel"
    )

    output = run_python(
        HIDE_PACKAGE
        + """
import torch
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

config = AutoConfig.from_pretrained("causal_lm", trust_remote_code=True)
assert type(config).__name__ == "CLLM4RecConfig" and config.num_items == 7, config
for name, auto_class, field in (
    ("causal_lm", AutoModelForCausalLM, "logits"),
    ("base", AutoModel, "last_hidden_state"),
):
    model = auto_class.from_pretrained(name, trust_remote_code=True).eval()
    assert not type(model).__module__.startswith("hf_cllm4rec"), type(model).__module__
    reference = torch.load(f"{name}.pt")
    with torch.no_grad():
        actual = getattr(model(reference["input_ids"], reference["attention_mask"]), field)
    torch.testing.assert_close(actual, reference["expected"], rtol=0, atol=1e-6)
    print(name, type(model).__name__, type(model).__module__.split(".")[0])
assert not [module for module in sys.modules if module.startswith("hf_cllm4rec")]
""",
        tmp_path,
    )
    assert output.split() == [
        "causal_lm",
        "CLLM4RecForCollaborativeLM",
        "transformers_modules",
        "base",
        "CLLM4RecModel",
        "transformers_modules",
    ]


def build_hub_cache(source_dir, cache_dir, repo_id: str, commit: str):
    """Lays `source_dir`'s files out as huggingface_hub caches a downloaded repository revision."""
    repo_dir = cache_dir / f"models--{repo_id.replace('/', '--')}"
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "blobs").mkdir()
    snapshot = repo_dir / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(commit)
    for path in source_dir.iterdir():
        data = path.read_bytes()
        blob = repo_dir / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / path.name).symlink_to(os.path.relpath(blob, snapshot))
    return snapshot


def test_fresh_interpreter_registers_on_import_and_resolves_a_repository_from_the_hub_cache(tmp_path):
    model = tiny_model(CLLM4RecForCollaborativeLM, id_std=1.0)
    tokenizer = CLLM4RecTokenizer(tiny_word_tokenizer(), model.config)
    model.save_pretrained(tmp_path / "checkpoint")
    tokenizer.save_pretrained(tmp_path / "checkpoint")
    reference_outputs(model, tmp_path / "reference.pt")
    cache = tmp_path / "hub-cache"
    commit = hashlib.sha1(b"cllm4rec-beauty").hexdigest()
    snapshot = build_hub_cache(tmp_path / "checkpoint", cache, "org/cllm4rec-beauty", commit)
    assert (snapshot / "model.safetensors").is_symlink()
    text = "<user_1> has interacted with <item_2> <item_0>"

    output = run_python(
        f"""
        import huggingface_hub.constants as constants
        import torch
        from transformers import AutoConfig, AutoModel, AutoModelForCausalLM
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING

        # importing the package is what registers the auto classes
        assert "cllm4rec" not in CONFIG_MAPPING, "registered before the import"
        from hf_cllm4rec import CLLM4RecForCollaborativeLM, CLLM4RecForItemPrediction, CLLM4RecTokenizer

        config_class = type(AutoConfig.for_model("cllm4rec", num_users=2, num_items=3))
        print(config_class.__name__, AutoModel._model_mapping[config_class].__name__)

        assert constants.HF_HUB_OFFLINE and constants.HF_HUB_CACHE == {str(cache)!r}, constants.HF_HUB_CACHE
        reference = torch.load("reference.pt")
        for model_class in (CLLM4RecForCollaborativeLM, AutoModelForCausalLM):
            model = model_class.from_pretrained("org/cllm4rec-beauty").eval()
            with torch.no_grad():
                logits = model(reference["input_ids"], reference["attention_mask"]).logits
            torch.testing.assert_close(logits, reference["expected"], rtol=0, atol=1e-6)
            print(type(model).__name__)
        assert not any(parameter.requires_grad for parameter in model.model.backbone.parameters())
        predictor = CLLM4RecForItemPrediction.from_pretrained("org/cllm4rec-beauty")
        print(type(predictor).__name__, predictor.config.num_items)
        tokenizer = CLLM4RecTokenizer.from_pretrained("org/cllm4rec-beauty")
        print(tokenizer.encode({text!r}))
        try:
            CLLM4RecForItemPrediction.from_pretrained("org/cllm4rec-beauty", num_items=9)
        except ValueError as error:
            print("num_items" in str(error))
        """,
        tmp_path,
        HF_HUB_CACHE=str(cache),
    )
    lines = output.splitlines()
    assert lines[0] == "CLLM4RecConfig CLLM4RecModel"
    assert lines[1:4] == ["CLLM4RecForCollaborativeLM", "CLLM4RecForCollaborativeLM", "CLLM4RecForItemPrediction 7"]
    assert lines[4] == str(tokenizer.encode(text))
    assert lines[5] == "True"
