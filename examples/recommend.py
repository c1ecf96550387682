"""
Top-k recommendations of a fine-tuned CLLM4Rec model for chosen users, with their items' text.

    python examples/recommend.py --model runs/beauty-finetune --data data/beauty --users A1YJEY40YUW4SE A60XNB876KYML --k 10

Users are the data set's own (raw) ids; each is prompted with its training history.
"""

from dataclasses import dataclass, field

import torch
from transformers import HfArgumentParser

from hf_cllm4rec import CLLM4RecForItemPrediction, CLLM4RecTokenizer, IdMappings, Recommender
from hf_cllm4rec.training.recipes import DataArguments, load_data


@dataclass
class RecommendArguments:
    model: str = field(metadata={"help": "Folder or Hub name of a fine-tuned CLLM4Rec model."})
    users: list[str] = field(default_factory=list, metadata={"help": "Raw user ids; default: the first three users."})
    k: int = field(default=10, metadata={"help": "How many items to recommend."})
    history_permutations: int = field(default=1, metadata={"help": "History orders the scores average over."})


def main() -> None:
    parser = HfArgumentParser((RecommendArguments, DataArguments))
    args, data_args = parser.parse_args_into_dataclasses()
    mappings = IdMappings.from_data(load_data(data_args))
    model = CLLM4RecForItemPrediction.from_pretrained(args.model).to("cuda" if torch.cuda.is_available() else "cpu")
    recommender = Recommender(
        model, CLLM4RecTokenizer.from_pretrained(args.model), mappings, history_permutations=args.history_permutations
    )
    users = args.users or mappings.users[:3]
    for user, ranked in zip(users, recommender.recommend_raw(users, k=args.k), strict=True):
        print(f"user {user} ({len(mappings.history(mappings.user_index(user)))} training items)")
        for rank, item in enumerate(ranked, start=1):
            print(f"  {rank:>3}. {item['item_id']}  score {item['score']:.3f}  {item['text'][:100]}")


if __name__ == "__main__":
    main()
