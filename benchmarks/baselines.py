"""Collaborative-filtering baselines for the CLLM4Rec benchmarks: popularity, EASE and Multi-VAE.

Every recommender is fitted on a scipy CSR user x item training matrix and scores users from their histories (rows
of such a matrix) over all items as a `(num_users, num_items)` torch tensor. Entries of the matrices are implicit
feedback: every stored entry is one interaction. All are evaluated with the paper's full-ranking protocol
(`hf_cllm4rec.evaluation`): the input is the training history, training items are excluded from the ranking.

Run all three on a prepared data set (`cllm4rec prepare`), writing `benchmarks/results/baselines-<name>.json` with the
device, versions and git commit (`benchmarks/quality.py` runs the same baselines beside CLLM4Rec):

```bash
python -m benchmarks.baselines --data data/beauty --name beauty
```
"""

from __future__ import annotations

import argparse
import copy
import logging
import math
import time
from pathlib import Path

import numpy as np
import scipy.sparse
import torch
from torch import nn

from benchmarks.provenance import git_commit, recorded_arguments, recorded_location, write_result
from hf_cllm4rec.evaluation import evaluate_recommender, model_selection_score
from hf_cllm4rec.training.presets import given_options
from hf_cllm4rec.training.recipes import DataArguments, load_data

logger = logging.getLogger(__name__)

DEFAULT_EASE_L2_GRID = (1.0, 10.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0)


def evaluate_baseline(
    recommender, train: scipy.sparse.csr_matrix, heldout: scipy.sparse.csr_matrix, per_user: bool = False
) -> dict:
    """Full-ranking metrics of a fitted recommender: scored from `train`, `train` excluded, ranked against `heldout`
    (with `per_user`, each user's too)."""
    return evaluate_recommender(
        lambda users: recommender.score(train[users]), heldout, exclude=train, batch_size=2048, per_user=per_user
    )


class PopularityRecommender:
    """Scores every item by the number of training users who interacted with it, whatever the user."""

    def fit(self, train: scipy.sparse.csr_matrix) -> PopularityRecommender:
        self.item_counts = torch.from_numpy(np.diff(scipy.sparse.csc_matrix(train).indptr).astype(np.float32))
        return self

    def score(self, histories: scipy.sparse.csr_matrix) -> torch.Tensor:
        return self.item_counts.expand(histories.shape[0], -1)


class EASE:
    """EASE (Steck, 2019): a closed-form item-item linear autoencoder.

    With `P = (X^T X + l2 * I)^-1`, the item weights are `B = I - P / diag(P)` (each column divided by its diagonal
    entry), i.e. `B_ij = -P_ij / P_jj` with a zero diagonal, and a user with history `x` scores `x B`.
    """

    def __init__(self, l2: float = 100.0):
        if l2 <= 0:
            raise ValueError(f"`l2` must be positive, got {l2}.")
        self.l2 = l2

    def fit(self, train: scipy.sparse.csr_matrix) -> EASE:
        binary_train = (train != 0).astype(np.float64)
        gram = torch.from_numpy((binary_train.T @ binary_train).toarray())
        gram.diagonal().add_(self.l2)
        precision = torch.cholesky_inverse(torch.linalg.cholesky(gram))
        item_weights = precision / -precision.diagonal()
        item_weights.diagonal().zero_()
        self.item_weights = item_weights.to(torch.float32).numpy()
        return self

    def score(self, histories: scipy.sparse.csr_matrix) -> torch.Tensor:
        return torch.from_numpy((histories != 0).astype(np.float32) @ self.item_weights)


def tune_ease(
    train: scipy.sparse.csr_matrix,
    validation: scipy.sparse.csr_matrix,
    l2_grid: tuple[float, ...] = DEFAULT_EASE_L2_GRID,
) -> tuple[EASE, dict[float, dict[str, float]]]:
    """Fits EASE for every `l2` of the grid; returns the best on validation Recall@20 + Recall@40 + NDCG@100 and the
    validation metrics of every `l2`."""
    validation_metrics, best_model, best_score = {}, None, -math.inf
    for l2 in l2_grid:
        model = EASE(l2).fit(train)
        validation_metrics[l2] = evaluate_baseline(model, train, validation)
        logger.info("EASE l2=%s %s", l2, validation_metrics[l2])
        if model_selection_score(validation_metrics[l2]) > best_score:
            best_model, best_score = model, model_selection_score(validation_metrics[l2])
    return best_model, validation_metrics


def _bag_lengths(item_ids: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    return torch.diff(offsets, append=offsets.new_tensor([len(item_ids)]))


def _histories_to_bags(histories: scipy.sparse.csr_matrix, device: torch.device | str) -> tuple[torch.Tensor, ...]:
    histories = scipy.sparse.csr_matrix(histories)
    item_ids = torch.from_numpy(histories.indices.astype(np.int64)).to(device)
    offsets = torch.from_numpy(histories.indptr[:-1].astype(np.int64)).to(device)
    return item_ids, offsets


class MultiVAE(nn.Module):
    """Multi-VAE network (Liang et al., 2018): items -> 600 tanh -> 200 (mean, log-variance) -> 600 tanh -> items.

    The input of a user is the L2-normalized binary history with dropout. The first encoder layer reads it sparsely,
    as a weighted sum of the rows of an `nn.EmbeddingBag` (the transposed weight of a dense `Linear(num_items, 600)`).
    Users are given as their concatenated item ids and the offset at which each user starts (`nn.EmbeddingBag`'s
    layout).
    """

    def __init__(self, num_items: int, hidden_size: int = 600, latent_size: int = 200, dropout: float = 0.5):
        super().__init__()
        self.input_dropout = nn.Dropout(dropout)
        self.input_layer = nn.EmbeddingBag(num_items, hidden_size, mode="sum")
        self.input_bias = nn.Parameter(torch.empty(hidden_size))
        self.latent_layer = nn.Linear(hidden_size, 2 * latent_size)
        self.decoder = nn.Sequential(nn.Linear(latent_size, hidden_size), nn.Tanh(), nn.Linear(hidden_size, num_items))
        # The original initialization: Xavier-uniform weights, N(0, 0.001) biases.
        for name, parameter in self.named_parameters():
            if "bias" in name:
                nn.init.normal_(parameter, std=0.001)
            else:
                nn.init.xavier_uniform_(parameter)

    def forward(self, item_ids: torch.Tensor, offsets: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Item logits, latent mean and latent log-variance; the latent is sampled in training, the mean otherwise."""
        history_lengths = _bag_lengths(item_ids, offsets)
        input_values = torch.repeat_interleave(history_lengths.to(torch.float32).rsqrt(), history_lengths)
        hidden = self.input_layer(item_ids, offsets, per_sample_weights=self.input_dropout(input_values))
        mean, log_variance = self.latent_layer(torch.tanh(hidden + self.input_bias)).chunk(2, dim=-1)
        latent = mean + torch.randn_like(mean) * torch.exp(0.5 * log_variance) if self.training else mean
        return self.decoder(latent), mean, log_variance

    def loss(self, item_ids: torch.Tensor, offsets: torch.Tensor, kl_weight: float) -> torch.Tensor:
        """Negative ELBO averaged over users: multinomial negative log-likelihood of each history plus `kl_weight`
        times the KL divergence from the standard normal prior."""
        logits, mean, log_variance = self(item_ids, offsets)
        user_of_item = torch.repeat_interleave(
            torch.arange(len(offsets), device=offsets.device), _bag_lengths(item_ids, offsets)
        )
        negative_log_likelihood = -torch.log_softmax(logits, dim=-1)[user_of_item, item_ids].sum() / len(offsets)
        kl_divergence = -0.5 * (1 + log_variance - mean**2 - log_variance.exp()).sum(dim=-1).mean()
        return negative_log_likelihood + kl_weight * kl_divergence


class MultiVAERecommender:
    """Trains a [`MultiVAE`] with a KL weight annealed linearly from 0 to `kl_anneal_cap` across training, keeping
    the epoch with the best validation NDCG@100.

    Args:
        hidden_size, latent_size, dropout: the network (600, 200 and 0.5 in the paper).
        kl_anneal_cap (`float`, defaults to 0.2): the KL weight at the last update.
        learning_rate, batch_size, num_epochs: Adam with learning rate 1e-3 on batches of 500 users for 200 epochs.
        seed (`int`): seeds the initialization, shuffling, dropout and sampling, leaving the global RNG untouched.
        device: where the network trains and scores.
    """

    def __init__(
        self,
        hidden_size: int = 600,
        latent_size: int = 200,
        dropout: float = 0.5,
        kl_anneal_cap: float = 0.2,
        learning_rate: float = 1e-3,
        batch_size: int = 500,
        num_epochs: int = 200,
        seed: int = 98765,
        device: torch.device | str = "cpu",
    ):
        self.hidden_size, self.latent_size, self.dropout = hidden_size, latent_size, dropout
        self.kl_anneal_cap, self.learning_rate = kl_anneal_cap, learning_rate
        self.batch_size, self.num_epochs, self.seed, self.device = batch_size, num_epochs, seed, device

    def fit(
        self, train: scipy.sparse.csr_matrix, validation: scipy.sparse.csr_matrix | None = None
    ) -> MultiVAERecommender:
        """Trains on every user's training history; with `validation`, keeps the epoch with the best NDCG@100.

        `self.history` records, per epoch, the mean training loss and (with `validation`) the validation metrics.
        """
        train = scipy.sparse.csr_matrix(train)
        num_users = train.shape[0]
        updates_per_epoch = math.ceil(num_users / self.batch_size)
        self.history, best_ndcg, best_state = [], -math.inf, None
        with torch.random.fork_rng():
            torch.manual_seed(self.seed)
            self.model = MultiVAE(train.shape[1], self.hidden_size, self.latent_size, self.dropout).to(self.device)
            optimizer = torch.optim.Adam(self.model.parameters(), lr=self.learning_rate)
            shuffling = np.random.default_rng(self.seed)
            for epoch in range(self.num_epochs):
                shuffled_train = train[shuffling.permutation(num_users)]
                record = {
                    "epoch": epoch + 1,
                    "loss": self._train_epoch(shuffled_train, optimizer, epoch * updates_per_epoch),
                }
                if validation is not None:
                    record.update(evaluate_baseline(self, train, validation))
                    if record["ndcg@100"] > best_ndcg:
                        best_ndcg, best_state = record["ndcg@100"], copy.deepcopy(self.model.state_dict())
                self.history.append(record)
                logger.info("Multi-VAE %s", record)
        if best_state is not None:
            self.model.load_state_dict(best_state)
        return self

    def _train_epoch(self, shuffled_train: scipy.sparse.csr_matrix, optimizer, first_update: int) -> float:
        """One pass over the users in batches; returns the mean loss per user."""
        self.model.train()
        num_users = shuffled_train.shape[0]
        num_updates = self.num_epochs * math.ceil(num_users / self.batch_size)
        total_loss = 0.0
        for update, start in enumerate(range(0, num_users, self.batch_size), start=first_update):
            histories = shuffled_train[start : start + self.batch_size]
            kl_weight = self.kl_anneal_cap * update / num_updates
            loss = self.model.loss(*_histories_to_bags(histories, self.device), kl_weight=kl_weight)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total_loss += loss.item() * histories.shape[0]
        return total_loss / num_users

    @torch.no_grad()
    def score(self, histories: scipy.sparse.csr_matrix) -> torch.Tensor:
        self.model.eval()
        logits, _, _ = self.model(*_histories_to_bags(histories, self.device))
        return logits


BASELINES = ("popularity", "ease", "multivae")


def unknown_baselines(names) -> list[str]:
    """The names that are not in `BASELINES`, sorted."""
    return sorted(set(names) - set(BASELINES))


def baselines_option(text: str) -> str:
    """The `--baselines` option of the benchmark scripts: names of `BASELINES` separated by commas, or '' for none;
    checked when the command line is read, not after the training it follows."""
    unknown = unknown_baselines(text.split(",")) if text else []
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown baselines {unknown}; choose from {list(BASELINES)} or ''.")
    return text


def run_baselines(
    names: list[str],
    train: scipy.sparse.csr_matrix,
    validation: scipy.sparse.csr_matrix,
    test: scipy.sparse.csr_matrix,
    device: torch.device | str = "cpu",
    vae_epochs: int = 200,
) -> dict[str, dict]:
    """Fits each named baseline on `train` (choosing EASE's L2 weight and Multi-VAE's epoch on `validation`) and
    returns, per name, its test metrics, what was chosen and the wall time."""
    unknown = unknown_baselines(names)
    if unknown:
        raise ValueError(f"Unknown baselines {unknown}; choose from {list(BASELINES)}.")
    results = {}
    for name in names:
        start = time.perf_counter()
        if name == "popularity":
            results[name] = {"test": evaluate_baseline(PopularityRecommender().fit(train), train, test)}
        elif name == "ease":
            ease, validation_metrics = tune_ease(train, validation)
            results[name] = {
                "l2": ease.l2,
                "validation": validation_metrics[ease.l2],
                "test": evaluate_baseline(ease, train, test),
            }
        else:
            vae = MultiVAERecommender(num_epochs=vae_epochs, device=device).fit(train, validation)
            best_epoch = max(vae.history, key=lambda record: record["ndcg@100"])
            results[name] = {
                "best_epoch": best_epoch["epoch"],
                "epochs": vae_epochs,
                "validation": {key: value for key, value in best_epoch.items() if key not in ("epoch", "loss")},
                "validation_per_epoch": vae.history,
                "test": evaluate_baseline(vae, train, test),
            }
        results[name]["wall_s"] = time.perf_counter() - start
        logger.info("%s: %s", name, results[name]["test"])
    return results


def run_baselines_on_data(data: str, names: list[str], vae_epochs: int = 200) -> dict[str, dict]:
    """[`run_baselines`] on the splits of a prepared data set (a `cllm4rec prepare` folder, or 'builtin'), on the
    GPU where there is one."""
    prepared = load_data(DataArguments(data=data))
    train, validation, test = (prepared.to_sparse(split) for split in ("train", "validation", "test"))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return run_baselines(names, train, validation, test, device, vae_epochs)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument("--data", required=True, help="A folder written by `cllm4rec prepare`, or 'builtin'.")
    parser.add_argument("--name", required=True, help="Names the JSON: `<results_dir>/baselines-<name>.json`.")
    parser.add_argument("--baselines", type=baselines_option, default=",".join(BASELINES))
    parser.add_argument("--vae_epochs", type=int, default=200, help="Multi-VAE training epochs.")
    parser.add_argument("--results_dir", default="benchmarks/results")
    args = parser.parse_args(argv)
    if not args.baselines:
        parser.error(f"--baselines names none: give some of {','.join(BASELINES)}.")
    given = given_options(parser, argv)
    if "vae_epochs" in given and "multivae" not in args.baselines.split(","):
        parser.error("--vae_epochs trains Multi-VAE: it needs multivae among --baselines.")
    if args.vae_epochs < 1:
        parser.error(f"--vae_epochs must be at least 1, got {args.vae_epochs}.")
    return args


def main():
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    commit = git_commit()
    baselines = run_baselines_on_data(args.data, args.baselines.split(","), args.vae_epochs)
    result = {
        "benchmark": "baselines",
        "name": args.name,
        "data": recorded_location(args.data),
        "configuration": recorded_arguments(args),
        "baselines": baselines,
    }
    print(f"wrote {write_result(Path(args.results_dir) / f'baselines-{args.name}.json', result, commit)}")


if __name__ == "__main__":
    main()
