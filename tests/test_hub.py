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
    CLLM4RecForItemPrediction,
    CLLM4RecTokenizer,
    save_for_hub,
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
    """Saves the model's logits on the fixed batch next to its checkpoint, for a subprocess to compare with."""
    with torch.no_grad():
        logits = model(INPUT_IDS, ATTENTION_MASK).logits
    torch.save({"input_ids": INPUT_IDS, "attention_mask": ATTENTION_MASK, "expected": logits}, path)
    return logits


def test_auto_classes_resolve_cllm4rec(tmp_path):
    config = tiny_cllm4rec_config()
    assert isinstance(AutoConfig.for_model("cllm4rec", num_users=5, num_items=7), CLLM4RecConfig)
    assert type(AutoModel.from_config(config)) is CLLM4RecForItemPrediction
    # the collaborative LM's logits are over items, not words: it is no causal LM of the vocabulary
    with pytest.raises(ValueError, match="Unrecognized configuration class"):
        AutoModelForCausalLM.from_config(config)

    model = tiny_model(CLLM4RecForCollaborativeLM, id_std=1.0)
    model.save_pretrained(tmp_path)
    assert not (tmp_path / "modeling_cllm4rec.py").exists()  # no remote code unless asked for
    assert type(AutoConfig.from_pretrained(tmp_path)) is CLLM4RecConfig
    # either head's checkpoint loads as the item predictor: the weights are laid out alike (`model.*`)
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert type(loaded) is CLLM4RecForItemPrediction
    assert loaded.state_dict().keys() == model.state_dict().keys()
    torch.testing.assert_close(
        loaded.score_items(INPUT_IDS, ATTENTION_MASK), model.score_items(INPUT_IDS, ATTENTION_MASK)
    )


@pytest.mark.parametrize("model_class", [CLLM4RecForItemPrediction, CLLM4RecForCollaborativeLM])
def test_auto_model_loads_the_same_class_and_scores_with_and_without_the_package(model_class, tmp_path):
    """`save_for_hub` maps `AutoModel` to the item predictor whatever head it saves: the package and the checkpoint's
    own code (`trust_remote_code=True`, where the package is not importable) load the same class and scores."""
    model = tiny_model(model_class, "llama", id_std=1.0)
    tokenizer = CLLM4RecTokenizer(tiny_word_tokenizer(), model.config)
    save_for_hub(model, tokenizer, tmp_path / "checkpoint")
    files = {path.name for path in (tmp_path / "checkpoint").iterdir()}
    assert {"configuration_cllm4rec.py", "modeling_cllm4rec.py", "tokenization_cllm4rec.py"} <= files
    assert json.loads((tmp_path / "checkpoint" / "config.json").read_text())["auto_map"] == {
        "AutoConfig": "configuration_cllm4rec.CLLM4RecConfig",
        "AutoModel": "modeling_cllm4rec.CLLM4RecForItemPrediction",
    }
    assert "auto_map" not in model.config.to_dict(), "saving leaves the model's config as it was"
    with_package = AutoModel.from_pretrained(tmp_path / "checkpoint").eval()
    assert type(with_package) is CLLM4RecForItemPrediction
    scores = with_package.score_items(INPUT_IDS, ATTENTION_MASK)
    torch.testing.assert_close(scores, model.score_items(INPUT_IDS, ATTENTION_MASK))
    torch.save({"input_ids": INPUT_IDS, "attention_mask": ATTENTION_MASK, "expected": scores}, tmp_path / "scores.pt")

    output = run_python(
        HIDE_PACKAGE
        + """
import torch
from transformers import AutoConfig, AutoModel

config = AutoConfig.from_pretrained("checkpoint", trust_remote_code=True)
assert type(config).__name__ == "CLLM4RecConfig" and config.num_items == 7, config
model = AutoModel.from_pretrained("checkpoint", trust_remote_code=True).eval()
reference = torch.load("scores.pt")
torch.testing.assert_close(
    model.score_items(reference["input_ids"], reference["attention_mask"]), reference["expected"], rtol=0, atol=1e-6
)
assert not [module for module in sys.modules if module.startswith("hf_cllm4rec")]
print(type(model).__name__, type(model).__module__.split(".")[0])
""",
        tmp_path,
    )
    assert output.split() == ["CLLM4RecForItemPrediction", "transformers_modules"]


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
        from transformers import AutoConfig, AutoModel
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING

        # importing the package is what registers the auto classes
        assert "cllm4rec" not in CONFIG_MAPPING, "registered before the import"
        from hf_cllm4rec import CLLM4RecForCollaborativeLM, CLLM4RecForItemPrediction, CLLM4RecTokenizer

        config_class = type(AutoConfig.for_model("cllm4rec", num_users=2, num_items=3))
        print(config_class.__name__, AutoModel._model_mapping[config_class].__name__)

        assert constants.HF_HUB_OFFLINE and constants.HF_HUB_CACHE == {str(cache)!r}, constants.HF_HUB_CACHE
        reference = torch.load("reference.pt")
        model = CLLM4RecForCollaborativeLM.from_pretrained("org/cllm4rec-beauty").eval()
        with torch.no_grad():
            logits = model(reference["input_ids"], reference["attention_mask"]).logits
        torch.testing.assert_close(logits, reference["expected"], rtol=0, atol=1e-6)
        print(type(model).__name__)
        for model_class in (CLLM4RecForItemPrediction, AutoModel):
            predictor = model_class.from_pretrained("org/cllm4rec-beauty")
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
    assert lines[0] == "CLLM4RecConfig CLLM4RecForItemPrediction"
    assert lines[1:4] == ["CLLM4RecForCollaborativeLM", "CLLM4RecForItemPrediction 7", "CLLM4RecForItemPrediction 7"]
    assert lines[4] == str(tokenizer.encode(text))
    assert lines[5] == "True"
