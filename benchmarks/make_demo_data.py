"""Builds the default data set shipped in ``miscal_jax/data/`` from ``../shared/data``.

Run once from the repository root: ``python benchmarks/make_demo_data.py``.
Source: the MIT-licensed MMLU-Pro demo subset of the LLM-Calibration-Study
results (3,001 questions x 3 models) with all-MiniLM-L6-v2 question embeddings.
"""

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

SRC = Path(__file__).resolve().parents[1].parent / "shared/data/llm-calibration-study-mmlu-pro"
OUT = Path(__file__).resolve().parents[1] / "miscal_jax/data"


def main() -> None:
    demo = pd.read_csv(SRC / "demo_3k_3models.csv.gz")
    emb = np.load(SRC / "question_embeddings_all-MiniLM-L6-v2_f16.npy")
    models = sorted(demo.model.unique())
    items = demo.drop_duplicates("row_index").sort_values("row_index").reset_index(drop=True)
    categories = sorted(items.category.unique())
    wide = {
        col: demo.pivot(index="row_index", columns="model", values=col).loc[items.row_index, models]
        for col in ("correct", "answered", "conf_verbal_numerical", "conf_logit_perplexity")
    }
    np.savez_compressed(
        OUT / "mmlu_pro_demo.npz",
        embeddings=emb[items.row_index.to_numpy()].astype(np.float16),
        row_index=items.row_index.to_numpy(np.int32),
        question_id=items.question_id.to_numpy(np.int32),
        category=items.category.map({c: i for i, c in enumerate(categories)}).to_numpy(np.int8),
        category_names=np.array(categories),
        models=np.array(models),
        correct=wide["correct"].to_numpy(np.int8).T,
        answered=wide["answered"].to_numpy(np.int8).T,
        conf_verbal=wide["conf_verbal_numerical"].to_numpy(np.float32).T,
        conf_logit=wide["conf_logit_perplexity"].to_numpy(np.float32).T,
    )
    with gzip.open(OUT / "mmlu_pro_demo_questions.json.gz", "wt", encoding="utf-8") as f:
        json.dump(items.question.tolist(), f)
    shutil.copy(
        SRC / "raw/LICENSE.LLM-Calibration-Study.txt", OUT / "LICENSE.LLM-Calibration-Study.txt"
    )
    shutil.copy(
        SRC / "LICENSE.TIGER-AI-Lab-MMLU-Pro-repo.txt",
        OUT / "LICENSE.TIGER-AI-Lab-MMLU-Pro-repo.txt",
    )
    print(f"{len(items)} items x {len(models)} models -> {OUT}")


if __name__ == "__main__":
    main()
