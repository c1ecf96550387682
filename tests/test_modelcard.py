"""Model cards generated from real runs, and checkpoints written for the Hub (code, tokenizer, mappings, card)."""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from huggingface_hub import ModelCard
from test_hub import HIDE_PACKAGE, run_python
from tiny_checkpoints import save_tiny_checkpoint, tiny_data, tiny_item_prediction_model

from hf_cllm4rec import (
    CLLM4RecConfig,
    CLLM4RecForCollaborativeLM,
    CLLM4RecForItemPrediction,
    IdMappings,
    Recommender,
    hub,
)
from hf_cllm4rec.hub.modelcard import CITATION, model_card, write_model_card
from hf_cllm4rec.training import FineTuningArguments
from hf_cllm4rec.training.recipes import DataArguments, FineTuningModelArguments, run_finetuning

HUB_FILES = {
    "README.md",
    "config.json",
    "model.safetensors",
    "configuration_cllm4rec.py",
    "modeling_cllm4rec.py",
    "tokenization_cllm4rec.py",
    "tokenizer.json",
    "tokenizer_config.json",
    "id_mappings.safetensors",
}


def tiny_finetuning_run(tmp_path):
    """Fine-tunes a tiny (untrained) pretraining checkpoint for one round; returns the output folder and metrics."""
    data = tiny_data()
    data.save(tmp_path / "data")
    model, tokenizer = tiny_item_prediction_model(data)
    pretrained = CLLM4RecForCollaborativeLM(model.config)
    pretrained.load_state_dict(model.state_dict())
    pretrained.save_pretrained(tmp_path / "pretrained")
    tokenizer.save_pretrained(tmp_path / "pretrained")
    training_args = FineTuningArguments(
        output_dir=str(tmp_path / "finetuned"),
        num_train_epochs=1,
        per_device_train_batch_size=8,
        learning_rate=1e-2,
        content_documents="item",
        max_length=64,
        eval_strategy="no",
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        use_cpu=True,
        weight_average_decay=0.9,
    )
    metrics = run_finetuning(
        FineTuningModelArguments(pretrained=str(tmp_path / "pretrained")),
        DataArguments(data=str(tmp_path / "data")),
        training_args,
    )
    return tmp_path / "finetuned", metrics, data


def test_fine_tuning_writes_a_card_of_the_measured_metrics(tmp_path):
    folder, metrics, data = tiny_finetuning_run(tmp_path)
    card = ModelCard.load(folder / "README.md")
    assert json.loads((folder / "test_results.json").read_text()) == metrics

    assert card.data.library_name == "hf_cllm4rec"
    assert card.data.license == "apache-2.0"
    assert card.data.datasets == ["synthetic"]
    assert {"cllm4rec", "recommendation"} <= set(card.data.tags)
    assert card.data.base_model is None  # a randomly built backbone has no Hub id
    measured = {"recall@20": metrics["test_recall@20"], "recall@40": metrics["test_recall@40"]}
    measured["ndcg@100"] = metrics["test_ndcg@100"]
    results = {result.metric_name.lower(): result for result in card.data.eval_results}
    assert {name: result.metric_value for name, result in results.items()} == measured
    for name, result in results.items():
        assert (result.task_type, result.dataset_name, result.dataset_split) == ("recommendation", "synthetic", "test")
        assert result.metric_type == name.split("@")[0] and result.metric_args == {"k": int(name.split("@")[1])}

    text = card.text
    assert f"| Recall@20 | {metrics['test_recall@20']:.4f} |" in text
    assert f"averaged over {int(metrics['test_num_users'])} users" in text
    assert "| `num_train_epochs` | 1 |" in text and "| `per_device_train_batch_size` | 8 |" in text
    assert "| `weight_average_decay` | 0.9 |" in text
    assert f"{data.num_users} users, {data.num_items} items" in text and "- `k_core`: 0" in text
    assert "trust_remote_code=True" in text and 'pipeline("item-recommendation", model="finetuned")' in text
    assert f'recommender("{data.user_raw_ids[0]}", top_k=10)' in text
    assert CITATION in text and "Zhu, Yaochen and Wu, Liang and Guo, Qi and Hong, Liangjie and Li, Jundong" in text
    # the card regenerates from the run's own files, training arguments included (JSON, not a pickle)
    regenerated = write_model_card(folder, data=data, card_path=folder / "regenerated.md")
    assert regenerated.read_text() == (folder / "README.md").read_text()
    # what the run wrote is what serving reads
    mappings = IdMappings.load(folder)
    assert mappings.users == data.user_raw_ids and mappings.histories[3] == data.histories("train")[3].tolist()


def test_card_metadata_follows_the_config_and_the_run():
    config = CLLM4RecConfig(num_users=3, num_items=4)
    config.architectures = ["CLLM4RecForCollaborativeLM"]
    config.base_model_name_or_path = "HuggingFaceTB/SmolLM2-135M"
    run = {"backbone_training": "lora", "lora_rank": 4}
    card = model_card(
        config, model_id="someone/cllm4rec-pretrained", license="mit", dataset_id="someone/beauty", training_args=run
    )
    assert card.data.base_model == "HuggingFaceTB/SmolLM2-135M"
    assert (card.data.license, card.data.datasets, card.data.eval_results) == ("mit", ["someone/beauty"], None)
    assert (
        "**pretraining** stage" in card.text and 'AutoModel.from_pretrained("someone/cllm4rec-pretrained"' in card.text
    )
    assert 'prompt="collaborative"' in card.text and "Recommender(model, tokenizer" in card.text
    assert "AutoModelForCausalLM" not in card.text
    assert "LoRA rank 4" in card.text and "No test metrics were measured" in card.text
    assert f"`{config.collaborative_prompt}` followed by the history" in card.text
    assert "history_permutations" not in card.text
    assert "id_embedding_init" not in card.text and "tie_item_head" not in card.text
    assert "dropout" not in card.text
    config.id_embedding_init, config.tie_item_head, config.id_embedding_dropout = "vocabulary", False, 0.1
    metrics = {"test_recall@20": 0.5}
    text = model_card(
        config, model_id="m", training_args=run | {"lora_dropout": 0.05, "history_permutations": 24}, metrics=metrics
    ).text
    assert "LoRA rank 4, dropout 0.05 |" in text
    assert "| dropout on the ID tokens' input embeddings `id_embedding_dropout` | 0.1 |" in text
    assert "over 24\nrandom orders of the history (`history_permutations=24`" in text
    assert 'IdMappings.load("m"), history_permutations=24)' in text
    # arguments of any kind, even without these settings: the card shows what they hold
    text = model_card(config, model_id="m", training_args=SimpleNamespace(seed=3)).text
    assert "LoRA rank" not in text and "| `seed` | 3 |" in text
    assert '(`id_embedding_init="vocabulary"`)' in text
    assert "| item head | a table of its own, not the collaborative item embeddings (`tie_item_head=False`) |" in text

    config.base_model_name_or_path = "/models/gpt2"  # a local folder is no Hub id, and its path is not told
    card = model_card(config, model_id="m")
    assert card.data.base_model is None and "/models" not in card.text
    assert "a pretrained backbone from a local folder (gpt2, 12 layers, hidden size 768)" in card.text


@pytest.fixture
def saved_for_hub(tmp_path):
    metrics = {"test_recall@20": 0.5, "test_recall@40": 0.75, "test_ndcg@100": 0.25, "test_num_users": 24}
    model, tokenizer, data = save_tiny_checkpoint(tmp_path / "checkpoint", metrics=metrics)
    return tmp_path, model, tokenizer, data


def test_save_for_hub_writes_code_tokenizer_mappings_and_card(saved_for_hub):
    tmp_path, model, tokenizer, data = saved_for_hub
    folder = tmp_path / "checkpoint"
    assert {path.name for path in folder.iterdir()} == HUB_FILES
    auto_map = json.loads((folder / "config.json").read_text())["auto_map"]
    assert auto_map == {
        "AutoConfig": "configuration_cllm4rec.CLLM4RecConfig",
        "AutoModel": "modeling_cllm4rec.CLLM4RecForItemPrediction",
    }
    # the registration is undone: a plain save carries no code
    assert CLLM4RecConfig._auto_class is None and CLLM4RecForItemPrediction._auto_class is None
    model.save_pretrained(tmp_path / "plain")
    assert not (tmp_path / "plain" / "modeling_cllm4rec.py").exists()
    card = ModelCard.load(folder / "README.md")
    assert [result.metric_value for result in card.data.eval_results] == [0.5, 0.75, 0.25]


def test_checkpoint_recommends_the_same_where_the_package_is_not_installed(saved_for_hub):
    tmp_path, model, tokenizer, data = saved_for_hub
    histories = data.histories("train")
    users, inputs = [0, 5, None], [histories[0].tolist(), histories[5].tolist(), [1, 2, 3]]
    expected = Recommender(model, tokenizer).recommend(users, inputs, k=5)
    # as the card's example without the package: the tokenizer's prompts, the histories excluded
    output = run_python(
        HIDE_PACKAGE
        + f"""
import json

import torch
from transformers import AutoModel
from transformers.dynamic_module_utils import get_class_from_dynamic_module

model = AutoModel.from_pretrained("checkpoint", trust_remote_code=True).eval()
CLLM4RecTokenizer = get_class_from_dynamic_module("tokenization_cllm4rec.CLLM4RecTokenizer", "checkpoint")
tokenizer = CLLM4RecTokenizer.from_pretrained("checkpoint", trust_remote_code=True)
histories = {inputs!r}
exclude = torch.nn.utils.rnn.pad_sequence([torch.tensor(h) for h in histories], True, padding_value=-1)
top = model.recommend(**tokenizer({users!r}, histories), k=5, exclude_item_ids=exclude)
assert not [module for module in sys.modules if module.startswith("hf_cllm4rec")]
print(type(model).__name__, type(model).__module__.split(".")[0])
print(json.dumps({{"item_ids": top.item_ids.tolist(), "scores": top.scores.tolist()}}))
""",
        tmp_path,
    )
    lines = output.splitlines()
    assert lines[0] == "CLLM4RecForItemPrediction transformers_modules"
    remote = json.loads(lines[1])
    assert remote["item_ids"] == expected.item_ids.tolist()
    torch.testing.assert_close(torch.tensor(remote["scores"]), expected.scores, rtol=0, atol=1e-5)


def test_push_to_hub_uploads_what_save_for_hub_writes(monkeypatch, tmp_path):
    uploaded = {}

    class RecordingApi:
        def __init__(self, token=None):
            uploaded["token"] = token

        def create_repo(self, repo_id, private=None, exist_ok=False):
            return type("RepoUrl", (), {"repo_id": f"someone/{repo_id}"})()

        def upload_folder(self, repo_id, folder_path, commit_message, revision):
            uploaded.update(
                repo_id=repo_id, files={path.name: path.read_bytes() for path in Path(folder_path).iterdir()}
            )
            return "commit"

    monkeypatch.setattr(hub.checkpoint, "HfApi", RecordingApi)
    data = tiny_data()
    model, tokenizer = tiny_item_prediction_model(data)
    assert hub.push_to_hub(model, tokenizer, "cllm4rec-tiny", token="secret", data=data) == "commit"
    assert (uploaded["repo_id"], uploaded["token"]) == ("someone/cllm4rec-tiny", "secret")
    assert set(uploaded["files"]) == HUB_FILES
    assert b'model="someone/cllm4rec-tiny"' in uploaded["files"]["README.md"]


def test_push_to_hub_commits_to_the_revision_asked_for(monkeypatch):
    calls = []

    class RecordingApi:
        def __init__(self, token=None):
            pass

        def create_repo(self, repo_id, private=None, exist_ok=False):
            return type("RepoUrl", (), {"repo_id": f"someone/{repo_id}"})()

        def create_branch(self, repo_id, branch, exist_ok=False):
            calls.append(("create_branch", repo_id, branch, exist_ok))

        def upload_folder(self, repo_id, folder_path, commit_message, revision):
            calls.append(("upload_folder", repo_id, revision))
            return "commit"

    monkeypatch.setattr(hub.checkpoint, "HfApi", RecordingApi)
    model, tokenizer = tiny_item_prediction_model(tiny_data())
    hub.push_to_hub(model, tokenizer, "cllm4rec-tiny", revision="round-3")
    assert calls == [
        ("create_branch", "someone/cllm4rec-tiny", "round-3", True),  # a new branch starts from main
        ("upload_folder", "someone/cllm4rec-tiny", "round-3"),
    ]
    calls.clear()
    hub.push_to_hub(model, tokenizer, "cllm4rec-tiny", revision="refs/pr/2")  # an open pull request
    assert calls == [("upload_folder", "someone/cllm4rec-tiny", "refs/pr/2")]
    calls.clear()
    hub.push_to_hub(model, tokenizer, "cllm4rec-tiny")
    assert calls == [("upload_folder", "someone/cllm4rec-tiny", None)]


def test_trainer_push_to_hub_uploads_the_same_files(monkeypatch, tmp_path):
    from hf_cllm4rec.training import CLLM4RecTrainer

    uploaded = {}

    class RecordingApi:
        def __init__(self, token=None):
            pass

        def create_repo(self, repo_id, private=None, exist_ok=False):
            return type("RepoUrl", (), {"repo_id": f"someone/{repo_id}"})()

        def create_branch(self, repo_id, branch, exist_ok=False):
            pass

        def upload_folder(self, repo_id, folder_path, commit_message, revision):
            files = {path.name: path for path in Path(folder_path).iterdir()}
            uploaded.update(repo_id=repo_id, revision=revision, files=set(files))
            uploaded["card"] = files["README.md"].read_text()
            return "commit"

    monkeypatch.setattr(hub.checkpoint, "HfApi", RecordingApi)
    data = tiny_data()
    model, tokenizer = tiny_item_prediction_model(data)
    arguments = FineTuningArguments(
        output_dir=str(tmp_path / "cllm4rec-run"), report_to="none", use_cpu=True, eval_strategy="no"
    )
    trainer = CLLM4RecTrainer(model, arguments, data, tokenizer)

    class CheckpointUpload:  # what the Trainer keeps of a checkpoint's upload (`hub_strategy`) still running
        def is_done(self):
            return "files" in uploaded

        def wait_until_done(self):
            uploaded["waited"] = "files" not in uploaded

    trainer.push_in_progress = CheckpointUpload()
    assert trainer.push_to_hub() == "commit"
    assert uploaded.pop("waited"), "the final upload must wait for the checkpoint's"
    assert uploaded["repo_id"] == "someone/cllm4rec-run" and uploaded["revision"] is None
    assert uploaded["files"] == HUB_FILES
    # the run's revision, and the metrics measured for the card: the one upload path honours both
    trainer.args.hub_revision = "round-3"
    assert trainer.push_to_hub(metrics={"test_recall@20": 0.4321}) == "commit"
    assert uploaded["revision"] == "round-3" and "0.4321" in uploaded["card"]
    assert trainer.push_to_hub(revision="v2") == "commit" and uploaded["revision"] == "v2"
