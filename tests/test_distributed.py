"""
Data parallelism is exact: two CPU processes with per-device batch B train the same parameters as one process with
batch 2B, in pretraining and in fine-tuning, through the example scripts and `accelerate launch`.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import set_seed

from hf_cllm4rec import CLLM4RecForCollaborativeLM, CLLM4RecForItemPrediction, CLLM4RecTokenizer
from hf_cllm4rec.evaluation import evaluate_model
from hf_cllm4rec.training.recipes import (
    BUILTIN_BACKBONE,
    BUILTIN_DATA,
    DataArguments,
    PretrainingModelArguments,
    build_pretraining_model,
    load_data,
)

REPOSITORY = Path(__file__).resolve().parents[1]
EXAMPLES = REPOSITORY / "examples"
TWO_PROCESSES = EXAMPLES / "accelerate_configs" / "cpu_two_processes.yaml"
PER_DEVICE_BATCH = 8
SEED = 3
NO_DROPOUT = '{"resid_pdrop": 0, "embd_pdrop": 0, "attn_pdrop": 0}'

# One round on the built-in data set with the demo backbone: SGD at a constant rate, so parameters compare gradients.
# The paper's recipe, which has no dropout or weight average: the default recipe's dropout draws differ by process.
COMMON_ARGUMENTS = [
    "--recipe", "paper",
    "--data", BUILTIN_DATA,
    "--num_train_epochs", "1",
    "--content_documents", "item",
    "--optim", "sgd",
    "--lr_scheduler_type", "constant",
    "--learning_rate", "1.0",
    "--save_strategy", "no",
    "--eval_strategy", "no",
    "--report_to", "none",
    "--use_cpu", "true",
    "--seed", str(SEED),
]  # fmt: skip
PRETRAINING_ARGUMENTS = [
    "--backbone", BUILTIN_BACKBONE,
    "--backbone_overrides", NO_DROPOUT,
    "--content_warmup_epochs", "0",
]  # fmt: skip


def run_example(script: str, arguments: list[str], output_dir: Path, processes: int) -> str:
    """
    Runs an example script on one process with batch 2B, or on two through `accelerate launch` with batch B;
    returns what it printed.
    """
    batch_size = PER_DEVICE_BATCH * (2 // processes)
    command = [script, *arguments, "--output_dir", str(output_dir), "--per_device_train_batch_size", str(batch_size)]
    if processes == 2:
        command = ["-m", "accelerate.commands.launch", "--config_file", str(TWO_PROCESSES), *command]
    environment = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    result = subprocess.run(
        [sys.executable, *command, "--log_level", "info"],
        cwd=REPOSITORY,
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, f"{script} on {processes} process(es) failed:\n{result.stdout}\n{result.stderr}"
    # a launcher that quietly starts one process would train with half the global batch
    global_batch = f"Total train batch size (w. parallel, distributed & accumulation) = {2 * PER_DEVICE_BATCH}"
    assert global_batch in result.stdout + result.stderr, (
        f"{script} did not train with the global batch {2 * PER_DEVICE_BATCH}: the launcher did not start "
        f"{processes} process(es)"
    )
    return result.stdout + result.stderr


def initial_model() -> CLLM4RecForCollaborativeLM:
    """The model the pretraining script starts from (same seed, same backbone)."""
    set_seed(SEED)
    model_args = PretrainingModelArguments(backbone=BUILTIN_BACKBONE, backbone_overrides=NO_DROPOUT)
    return build_pretraining_model(model_args, load_data(DataArguments(data=BUILTIN_DATA)))[0]


def id_tables(model) -> dict[str, torch.Tensor]:
    tables = {}
    for side in ("collaborative", "content"):
        users, items = model.base_model.id_embedding_tables(side)
        tables[f"{side}_user"], tables[f"{side}_item"] = users.weight.detach(), items.weight.detach()
    return tables


def assert_same_tables(one_process: dict, two_processes: dict, before: dict) -> None:
    for name, table in one_process.items():
        # item-text documents hold no user token: the content user table has nothing to learn from
        assert torch.equal(table, before[name]) == (name == "content_user"), f"{name}: trained or not as expected?"
        torch.testing.assert_close(
            two_processes[name], table, rtol=0, atol=1e-5, msg=lambda text, name=name: f"{name}: {text}"
        )


@pytest.mark.slow
def test_two_processes_train_like_one_with_the_global_batch(tmp_path):
    script = str(EXAMPLES / "pretrain.py")
    arguments = COMMON_ARGUMENTS + PRETRAINING_ARGUMENTS
    run_example(script, arguments, tmp_path / "pretrain-1", processes=1)
    run_example(script, arguments, tmp_path / "pretrain-2", processes=2)

    pretrained = id_tables(CLLM4RecForCollaborativeLM.from_pretrained(tmp_path / "pretrain-1"))
    assert_same_tables(
        pretrained,
        id_tables(CLLM4RecForCollaborativeLM.from_pretrained(tmp_path / "pretrain-2")),
        before=id_tables(initial_model()),
    )

    script = str(EXAMPLES / "finetune.py")
    arguments = [*COMMON_ARGUMENTS, "--pretrained", str(tmp_path / "pretrain-1")]
    run_example(script, arguments, tmp_path / "finetune-1", processes=1)
    printed = run_example(script, arguments, tmp_path / "finetune-2", processes=2)
    finetuned = CLLM4RecForItemPrediction.from_pretrained(tmp_path / "finetune-2")
    assert_same_tables(
        id_tables(CLLM4RecForItemPrediction.from_pretrained(tmp_path / "finetune-1")),
        id_tables(finetuned),
        before=pretrained,
    )
    # the two processes shared the test users (the first one's progress bar counts its share), and their metrics
    # are those of all users
    measured = json.loads((tmp_path / "finetune-2" / "test_results.json").read_text())
    tokenizer = CLLM4RecTokenizer.from_pretrained(tmp_path / "finetune-2")
    expected = evaluate_model(finetuned, tokenizer, load_data(DataArguments(data=BUILTIN_DATA)), "test")
    assert {name: measured[f"test_{name}"] for name in expected} == pytest.approx(expected, abs=1e-6)
    first_process_share = int(re.findall(r"Ranking: 100%\|[^|]*\| (\d+)/", printed)[-1])
    assert 0 < first_process_share < expected["num_users"]


@pytest.mark.slow
def test_a_model_sharded_across_processes_evaluates_like_one_process(tmp_path):
    """
    With FSDP (a wrapper, or FSDP2 per transformer block) the processes share the users, and where one has a batch
    fewer, or a batch of users without a prompt, it still makes its forward passes in step with the other's
    (a forward pass of a sharded model is collective: without that they wait for each other forever).
    """
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "sharded_evaluation.py"]
    environment = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPOSITORY / "src"))
    try:
        result = subprocess.run(
            [*command, str(tmp_path / "metrics")],
            cwd=REPOSITORY / "tests",
            env=environment,
            capture_output=True,
            text=True,
            timeout=300,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("sharded evaluation did not finish: the processes' forward passes fell out of step")
    assert result.returncode == 0, result.stdout + result.stderr
    for rank in (0, 1):
        results = json.loads((tmp_path / f"metrics-{rank}.json").read_text())
        for sharding in ("fsdp", "fsdp2"):
            for case, expected in results["one_process"].items():
                assert results[sharding][case] == pytest.approx(expected, abs=1e-9), (rank, sharding, case)


@pytest.mark.slow
def test_fsdp_on_two_processes_shards_the_id_tables_and_trains_like_one_process(tmp_path):
    rows_file = tmp_path / "rows.json"
    command = [sys.executable, str(REPOSITORY / "benchmarks" / "scale_stages" / "distributed.py"), "--quick"]
    command += ["--workdir", str(tmp_path), "--out", str(rows_file)]
    environment = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    rows = json.loads(rows_file.read_text())
    assert [(row["processes"], row["rank"]) for row in rows] == [(1, 0), (2, 0), (2, 1)]
    users = rows[0]["users"]
    assert set(rows[0]["id_table_rows_held"].values()) == {users}
    for row in rows[1:]:  # each process holds half of every table's rows
        assert set(row["id_table_rows_held"].values()) == {users // 2}
    assert 0 < rows[0]["id_tables_max_abs_difference"] < 1e-5
