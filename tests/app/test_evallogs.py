"""Evaluation-log readers against logs made by the real tools (tests/fixtures/build_eval_logs.py).

Every confidence is recomputed here from the raw log with NumPy (the slow,
obvious reference) and every outcome checked against what the tool itself
scored; damaged logs give one clear line and write nothing.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from miscal_jax.app import evallogs
from miscal_jax.app.cli import main
from miscal_jax.app.io import load_data, load_with_panel, read_source

LOGS = Path(__file__).resolve().parents[1] / "fixtures" / "eval_logs"
FAST = ["--folds", "3", "--permutations", "20", "--quiet", "--geometry", "raw,pca"]


@pytest.fixture
def logs(tmp_path):
    """A copy of the fixtures (the text-embedding cache is written beside the logs)."""
    shutil.copytree(LOGS, tmp_path / "logs")
    return tmp_path / "logs"


def _samples(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _mc_file(run: Path) -> Path:
    return next(run.rglob("samples_mini_mc_*.jsonl"))


# ----------------------------------------------------------------------------- lm-eval


@pytest.mark.parametrize("norm, metric", [("none", "acc"), ("length", "acc_norm")])
def test_lm_eval_confidence_is_softmax_of_the_chosen_choice(norm, metric):
    table = evallogs.read_lm_eval(LOGS / "lm_eval", normalisation=norm)
    assert table.rows == 3 * 40 and sorted(set(table.columns["model"])) == [
        "model-a",
        "model-b",
        "model-c",
    ]
    assert table.notes["kind"] == "lm-eval"
    assert len(table.notes["skipped"]) == 3 and "mini_gen" in table.notes["skipped"][0]
    assert "log-probabilities" in table.notes["skipped"][0]
    for run in sorted((LOGS / "lm_eval").iterdir()):
        model = f"model-{run.name[-1]}"
        rows = [i for i, m in enumerate(table.columns["model"]) if m == model]
        for k, s in zip(rows, _samples(_mc_file(run)), strict=True):
            ll = np.array([float(r[0]) for r in s["filtered_resps"]])
            if norm == "length":
                ll = ll / np.array([len(c) for c in s["doc"]["choices"]])
            p = np.exp(ll - ll.max()) / np.exp(ll - ll.max()).sum()
            assert table.columns["confidence"][k] == pytest.approx(p.max(), rel=1e-12)
            # the tool's own accuracy agrees with "the most likely choice is the target"
            assert table.columns["correct"][k] == s[metric] == float(p.argmax() == int(s["target"]))
            assert table.columns["item"][k] == f"mini_mc/{s['doc_id']}"
            assert table.columns["text"][k] == s["doc"]["question"]
            assert table.columns["group"][k] == "mini_mc"


def test_lm_eval_single_file_and_generative_only(logs):
    table = read_source(_mc_file(logs / "lm_eval" / "run_a"))
    assert table.rows == 40 and set(table.columns["model"]) == {"model-a"}
    gen = next((logs / "lm_eval" / "run_a").rglob("samples_mini_gen_*.jsonl"))
    with pytest.raises(ValueError, match="no usable task .*generative.*no 'confidence' field"):
        read_source(gen)
    # a generative task whose samples carry a confidence is read, scored by exact_match
    rows = _samples(gen)
    for k, s in enumerate(rows):
        s["confidence"] = 0.2 + 0.01 * k
    gen.write_text("".join(json.dumps(s) + "\n" for s in rows))
    table = read_source(gen)
    assert table.columns["confidence"][:2] == pytest.approx([0.2, 0.21])
    assert table.columns["correct"] == [s["exact_match"] for s in rows]


def test_lm_eval_duplicate_model_names_are_told_apart(logs):
    shutil.copytree(logs / "lm_eval" / "run_a", logs / "lm_eval" / "rerun_a")
    table = read_source(logs / "lm_eval")
    names = sorted(set(table.columns["model"]))
    assert "model-a (rerun_a/model-a)" in names and "model-a (run_a/model-a)" in names


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda t: t[: len(t) // 2], r"line \d+ of .* is not JSON .*damaged or truncated"),
        (lambda t: '{"doc_id": 1}\n' + t, "line 1 of .* is not an lm-eval sample"),
        (lambda t: "\n", "holds no samples"),
    ],
)
def test_lm_eval_damaged_files_are_refused(logs, tmp_path, damage, message):
    f = _mc_file(logs / "lm_eval" / "run_b")
    f.write_text(damage(f.read_text()))
    with pytest.raises(ValueError, match=message):
        read_source(logs / "lm_eval")
    out = tmp_path / "out"
    assert (
        main(["report", "--data", str(logs / "lm_eval"), "--model", "model-a", "--out", str(out)])
        == 2
    )
    assert not out.exists()


def test_lm_eval_normalisation_is_checked():
    with pytest.raises(ValueError, match="normalisation: expected one of"):
        evallogs.read_lm_eval(LOGS / "lm_eval", normalisation="tokens")


# ----------------------------------------------------------------------------- Inspect


def _inspect_reference(path: Path) -> dict:
    """Per sample id: the chosen letter's softmax among the letters, and the choice score."""
    from inspect_ai.log import read_eval_log

    log = read_eval_log(str(path))
    out = {}
    for s in log.samples:
        score = s.scores["choice"]
        tok = s.output.choices[0].logprobs.content[-1]
        lp = {t.token: t.logprob for t in tok.top_logprobs}
        v = np.array([lp[c] for c in "ABCD"])
        p = np.exp(v - v.max()) / np.exp(v - v.max()).sum()
        out[f"mini_mc/{s.id}"] = (p["ABCD".index(score.answer)], float(score.value == "C"))
    return out


def test_inspect_logs_read_with_inspects_reader():
    table = read_source(LOGS / "inspect")
    assert table.rows == 120 and table.notes == {"kind": "inspect", "skipped": [], "dropped": {}}
    models = sorted(set(table.columns["model"]))
    assert models == ["mockllm/model-a", "mockllm/model-b", "mockllm/model-c"]
    for f in sorted((LOGS / "inspect").glob("*.eval")):
        ref = _inspect_reference(f)
        rows = [i for i, p in enumerate(table.columns["model"]) if f.name in table.place(i)]
        assert len(rows) == 40
        for i in rows:
            conf, correct = ref[table.columns["item"][i]]
            assert table.columns["confidence"][i] == pytest.approx(conf, rel=1e-12)
            assert table.columns["correct"][i] == correct
    assert table.columns["text"][0].startswith("In chemistry class")
    # the .json format gives the same rows as the .eval log of the same outputs
    small = read_source(LOGS / "inspect_json")
    a = [i for i, m in enumerate(table.columns["model"]) if m == "mockllm/model-a"][:12]
    assert small.columns["confidence"] == [table.columns["confidence"][i] for i in a]
    assert small.columns["correct"] == [table.columns["correct"][i] for i in a]


def test_inspect_damaged_log_and_missing_reader(logs, monkeypatch):
    f = next((logs / "inspect").glob("*.eval"))
    f.write_bytes(f.read_bytes()[:5000])
    with pytest.raises(ValueError, match="is not a readable Inspect log .*damaged or truncated"):
        read_source(logs / "inspect")
    with pytest.raises(ValueError, match="is not a readable Inspect log"):
        read_source(f)
    monkeypatch.setitem(__import__("sys").modules, "inspect_ai.log", None)
    with pytest.raises(ValueError, match=r"needs inspect_ai .*miscal_jax\[inspect\]"):
        read_source(LOGS / "inspect_json")


def test_inspect_log_without_confidence_is_named(logs):
    """A log whose answers carry no log-probabilities: left out with the fix, or refused alone."""
    from inspect_ai.log import read_eval_log, write_eval_log

    f = next((logs / "inspect").glob("*.eval"))
    log = read_eval_log(str(f))
    for sample in log.samples:
        for choice in sample.output.choices:
            choice.logprobs = None
    write_eval_log(log, str(f))
    table = read_source(logs / "inspect")
    assert table.rows == 80 and "--logprobs" in table.notes["skipped"][0]
    with pytest.raises(ValueError, match="no usable Inspect log .*no confidence"):
        read_source(f)


# ----------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_report_from_a_folder_of_lm_eval_runs(logs, tmp_path):
    out = tmp_path / "report"
    args = ["report", "--data", str(logs / "lm_eval"), "--model", "model-a", "--out", str(out)]
    assert main([*args, *FAST, "--text-embedding", "lsa"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n"] == 40 and summary["source"]["model"] == "model-a"
    assert summary["source"]["panel"]["models"] == 2
    assert summary["source"]["log"]["kind"] == "lm-eval"
    html = (out / "report.html").read_text()
    assert "Read from lm-evaluation-harness samples" in html and "Left out:" in html
    # several models and no --model: one line naming them
    assert main(["report", "--data", str(logs / "lm_eval"), "--out", str(tmp_path / "x")]) == 2
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_report_from_inspect_logs_and_one_model(logs, tmp_path):
    out = tmp_path / "report"
    args = ["report", "--data", str(logs / "inspect"), "--model", "model-b", "--out", str(out)]
    assert main([*args, *FAST, "--text-embedding", "lsa"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["source"]["model"] == "mockllm/model-b" and summary["n"] == 40
    # one model's log alone: a single-model report on its embedded questions
    one = next((logs / "inspect").glob("*.eval"))
    data = load_data(one, text_embedding="lsa")
    assert data.embeddings.shape[0] == 40 and data.meta["log"]["kind"] == "inspect"
    panel = load_with_panel(logs / "inspect", model="model-c", text_embedding="lsa")
    assert panel.item_embeddings.shape[0] == 40 and len(panel.panel_models) == 2


def test_compare_reads_a_folder_of_runs(logs):
    from miscal_jax.app.compare import load_panel

    panel = load_panel(logs / "lm_eval", text_embedding="lsa")
    assert panel.models == ["model-a", "model-b", "model-c"] and panel.conf.shape == (3, 40)
    assert panel.meta["log"]["skipped"]


# ------------------------------------------------------------------------ formats met in the wild


def _rewrite(path: Path, change) -> list[dict]:
    rows = _samples(path)
    for sample in rows:
        change(sample)  # in place
    path.write_text("".join(json.dumps(s) + "\n" for s in rows))
    return rows


def test_lm_eval_mutual_info_metric_and_bad_log_likelihoods(logs):
    f = _mc_file(logs / "lm_eval" / "run_a")
    before = read_source(f).columns["confidence"]

    def mutual_info(s):  # lm-eval appends one unconditional request per choice
        s["filtered_resps"] = s["filtered_resps"] + [["0.0", "False"]] * len(s["filtered_resps"])
        s["metrics"] = s["metrics"] + ["acc_mutual_info"]

    _rewrite(f, mutual_info)
    assert read_source(f).columns["confidence"] == pytest.approx(before, rel=1e-12)
    with pytest.raises(ValueError, match="has no 0/1 'acc_norm'"):
        _rewrite(f, lambda s: s.pop("acc_norm"))
        read_source(f, normalisation="length")
    _rewrite(f, lambda s: s.__setitem__("filtered_resps", [["nan", "False"], ["-1", "False"]]))
    with pytest.raises(ValueError, match="log-likelihoods are missing, NaN or all -inf"):
        read_source(f)


def test_lm_eval_model_name_from_model_args_and_bad_sources(logs):
    run = logs / "lm_eval" / "run_b" / "model-b"
    results = next(run.glob("results_*.json"))
    content = json.loads(results.read_text())
    content.pop("model_name")
    results.write_text(json.dumps(content))
    assert "model-b" in read_source(logs / "lm_eval").columns["model"]
    results.write_text(json.dumps(content)[:100])
    with pytest.raises(ValueError, match="results_.* is not readable JSON .*delete the file"):
        read_source(logs / "lm_eval")
    with pytest.raises(ValueError, match="expected a path, a pandas or a polars DataFrame"):
        read_source([1, 2, 3])


def test_inspect_answers_scores_and_reruns(logs):
    """N scores count as wrong; the written letter is the answer; re-runs keep the newest log."""
    from inspect_ai.log import read_eval_log, write_eval_log

    f = sorted((logs / "inspect").glob("*.eval"))[0]
    log = read_eval_log(str(f))
    first, second = log.samples[0], log.samples[1]
    first.scores["choice"].value = "N"
    second.output.choices[0].logprobs = None  # no answer log-probabilities: left out, counted
    write_eval_log(log, str(f))
    table = read_source(f)
    assert table.rows == 39 and table.columns["correct"][0] == 0.0
    assert table.notes["dropped"] == {f"{log.eval.model}: mini_mc": 1}
    # a re-run of the same model and task: the newest successful log is read
    log.eval.created = "2099-01-01T00:00:00+00:00"
    write_eval_log(log, str(logs / "inspect" / "rerun.eval"))
    (logs / "inspect" / "logs.json").write_text('{"version": 1, "eval": {}}')  # eval-set manifest
    table = read_source(logs / "inspect")
    assert table.rows == 119 and any("older or failed run" in s for s in table.notes["skipped"])


def test_letter_confidence_merges_spaced_tokens_and_ignores_others():
    from types import SimpleNamespace as NS

    tops = [NS(token="A", logprob=np.log(0.3)), NS(token=" A", logprob=np.log(0.2))]
    tops += [NS(token="B", logprob=np.log(0.25)), NS(token="\n", logprob=np.log(0.25))]
    tokens = [NS(token=" A", logprob=np.log(0.3), top_logprobs=tops)]
    conf = evallogs._letter_confidence(tokens, "A", frozenset("AB"))
    assert conf == pytest.approx(0.5 / 0.75)
