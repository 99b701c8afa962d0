"""Which multiple-choice answer format makes Qwen2.5-Coder-0.5B-Instruct reason before it answers?

The single agent on the first 24 problems of CommonsenseQA (dev300) and ARC-Challenge (Dev), once
per candidate wording of the answer format (the sentence after "Reason step by step."): accuracy,
mean generated tokens, extraction failures, the most frequent answers and how many answers are
shorter than 10 tokens (a bare letter, no reasoning). Picked the format of every multiple-choice task
(docs/RESULTS.md).

    DIFFMAS_DATA_DIR=../shared/data python benchmarks/mc_answer_format.py
"""

import json
import shutil
from collections import Counter

from diffmas.engine import LM
from diffmas.evaluate import EvalConfig, evaluate
from diffmas.models import load_model
from diffmas.tasks.base import MultipleChoiceTask

FORMATS = {
    "v2": "Put only the letter of the correct option in \\boxed{}.",
    "v3": "Then write the letter of the correct option in \\boxed{}.",
    "v4": "End with the letter of the correct option in \\boxed{}, for example \\boxed{X} where X is your choice.",
}


def main() -> int:
    shutil.rmtree("/tmp/mcp", ignore_errors=True)
    lm = LM(*load_model("qwen2.5-coder-0.5b-instruct"))
    for name, fmt in FORMATS.items():
        MultipleChoiceTask.answer_format = fmt
        for task, split in (("commonsenseqa", "dev"), ("arc_challenge", "validation")):
            out = f"/tmp/mcp/{name}-{task}"
            s = evaluate(EvalConfig(task=task, split=split, method="single", limit=24, batch_size=12, out=out),
                         lm=lm, progress=False)
            recs = [json.loads(line) for line in open(f"{out}/records.jsonl")]
            print(name, task, f"acc {s['accuracy']:.2f} tok {s['mean_generated_tokens']:.0f}",
                  f"fail {s['extraction_failures']}",
                  Counter(r["prediction"] for r in recs).most_common(3), "short",
                  sum(r["generated_tokens"] < 10 for r in recs), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
