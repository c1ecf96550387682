"""
Top-k recommendations of a fine-tuned CLLM4Rec model for chosen users, with their items' text.

    python examples/recommend.py --model runs/beauty-finetune --data data/beauty --users A1YJEY40YUW4SE A60XNB876KYML --k 10

Users are the data set's own (raw) ids; each is prompted with its training history.
"""

from dataclasses import dataclass, field

import torch
from transformers import HfArgumentParser

from hf_cllm4rec import CLLM4RecForItemPrediction, CLLM4RecTokenizer
from hf_cllm4rec.training.recipes import DataArguments, load_data


@dataclass
class RecommendArguments:
    model: str = field(metadata={"help": "Folder or Hub name of a fine-tuned CLLM4Rec model."})
    users: list[str] = field(default_factory=list, metadata={"help": "Raw user ids; default: the first three users."})
    k: int = field(default=10, metadata={"help": "How many items to recommend."})


def main() -> None:
    parser = HfArgumentParser((RecommendArguments, DataArguments))
    args, data_args = parser.parse_args_into_dataclasses()
    data = load_data(data_args)
    model = CLLM4RecForItemPrediction.from_pretrained(args.model).to("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = CLLM4RecTokenizer.from_pretrained(args.model)
    users = [data.user_index(raw_id) for raw_id in args.users] or [0, 1, 2]
    histories = data.histories("train")
    output = model.recommend(users, [histories[user] for user in users], k=args.k, tokenizer=tokenizer)
    texts = data.item_texts()
    for user, items, scores in zip(users, output.item_ids.tolist(), output.scores.tolist(), strict=True):
        print(f"user {data.user_raw_ids[user]} ({len(histories[user])} training items)")
        for rank, (item, score) in enumerate(zip(items, scores, strict=True), start=1):
            print(f"  {rank:>3}. {data.item_raw_ids[item]}  score {score:.3f}  {texts[item][:100]}")


if __name__ == "__main__":
    main()
