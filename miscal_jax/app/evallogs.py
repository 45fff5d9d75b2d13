"""Per-item results from the logs of LLM evaluation tools, as one long table.

Two sources, each becoming a :class:`~miscal_jax.app.tables.Table` with the
columns ``item``, ``model``, ``confidence``, ``correct``, ``text`` and
``group`` (the task: evaluation only), one row per item and model:

- **lm-evaluation-harness** sample files (``--log_samples``:
  ``samples_<task>_<date>.jsonl``), one file or a folder of runs. A run is a
  folder of sample files; its model is the ``model_name`` of the
  ``results_<date>.json`` beside them (the folder's name if there is none).
  Multiple-choice tasks: the confidence is the probability of the chosen
  answer under the softmax of the choices' log-likelihoods (``"none"``,
  lm-eval's ``acc``) or of their log-likelihoods per character of the choice
  (``"length"``, the ranking behind ``acc_norm``); ``correct`` is the logged
  ``acc`` (or ``acc_norm``; the one matching the confidence, required).
  Generative tasks log no log-probabilities; they are read where the sample
  or its document has a numeric ``confidence`` field (``correct``: the
  task's first 0/1 metric, the same for every sample, recorded in the
  notes), and left out otherwise (with the reason in ``notes["skipped"]``).
- **Inspect** eval logs (``.eval`` or ``.json``, one file or a folder), read
  with ``inspect_ai``'s own log reader (the ``inspect`` extra). The
  confidence is a numeric ``confidence`` in the score's or the sample's
  metadata where a scorer put one there; else, for multiple-choice samples,
  the probability of the letter the model wrote (its last ``ANSWER: X``)
  among the choice letters in the answer token's top log-probabilities (its
  own token probability without them); else, for generated answers, the
  probability of the whole completion (``exp`` of the summed token
  log-probabilities: near 0 for long answers, so only meaningful for short
  ones). ``correct`` is the first scorer's value (``C``/``I``, true/false or
  1/0; ``N``, no answer, counts as wrong as in Inspect's own metrics);
  only the first epoch of each sample is read, and of several logs of one
  model on one task the newest successful one.

The item is ``<task>/<document or sample id>``, so runs of several models on
the same tasks line up for the panel geometry. Every problem raises
``ValueError`` naming the file, the line or sample, and the fix.
"""

import json
import math
import re
from pathlib import Path

from miscal_jax.app.tables import Table, json_objects

__all__ = ["NORMALISATIONS", "is_inspect_log", "is_lm_eval_samples", "read_inspect", "read_lm_eval"]

NORMALISATIONS = ("none", "length")
_SAMPLES = re.compile(r"^samples_(?P<task>.+)_(?P<date>\d{4}-\d{2}-\d{2}T[\d.\-]+)\.jsonl$")
_QUESTION_FIELDS = ("question", "query", "problem", "input", "prompt", "text", "sentence", "ctx")
#: Inspect's score values (``N``: no answer, scored 0 by Inspect's own metrics).
_CORRECT = {
    "C": 1.0,
    "I": 0.0,
    "N": 0.0,
    "CORRECT": 1.0,
    "INCORRECT": 0.0,
    "TRUE": 1.0,
    "FALSE": 0.0,
}
#: Files ``inspect eval-set`` writes beside its logs.
_MANIFESTS = ("logs.json", "eval-set.json")
_ANSWER = re.compile(r"ANSWER\s*:\s*([A-Z])\b")


def is_lm_eval_samples(path: Path) -> bool:
    """Whether ``path`` is an lm-eval sample file or a folder holding some."""
    if path.is_dir():
        return any(_SAMPLES.match(p.name) for p in path.rglob("samples_*.jsonl"))
    return bool(_SAMPLES.match(path.name))


def is_inspect_log(path: Path) -> bool:
    """Whether ``path`` is an Inspect log (``.eval``, ``.json`` with its header) or holds some."""
    if path.is_dir():
        return any(is_inspect_log(p) for p in path.rglob("*") if p.suffix in (".eval", ".json"))
    if path.suffix == ".eval":
        return True
    if path.suffix != ".json" or _SAMPLES.match(path.name) or path.name in _MANIFESTS:
        return False
    try:
        with open(path, encoding="utf-8") as f:
            head = f.read(4096)
    except (OSError, UnicodeDecodeError):
        return False
    return '"eval"' in head and '"version"' in head and not path.name.startswith("results_")


def _rows_table(rows: list[dict], places: list[str], source: str, meta: dict) -> Table:
    cols = ("item", "model", "confidence", "correct", "text", "group")
    columns = {c: [r[c] for r in rows] for c in cols}
    return Table(columns, set(), lambda i: places[i], len(rows), source, meta)


# ----------------------------------------------------------------------------- lm-eval


def _lm_eval_runs(path: Path) -> dict[Path, dict[str, Path]]:
    """Run folder -> task -> its newest sample file."""
    files = [path] if path.is_file() else sorted(path.rglob("samples_*.jsonl"))
    runs: dict[Path, dict[str, tuple[str, Path]]] = {}
    for f in files:
        m = _SAMPLES.match(f.name)
        if m is None:
            raise ValueError(
                f"data: {f} is not named like an lm-eval sample file "
                "(samples_<task>_<date>.jsonl); pass the file lm-eval wrote with --log_samples."
            )
        tasks = runs.setdefault(f.parent, {})
        old = tasks.get(m["task"])
        if old is None or m["date"] > old[0]:
            tasks[m["task"]] = (m["date"], f)
    if not runs:
        raise ValueError(
            f"data: {path} holds no lm-eval sample files (samples_<task>_<date>.jsonl); run "
            "lm-eval with --log_samples --output_path FOLDER and pass that folder."
        )
    return {run: {t: f for t, (_, f) in tasks.items()} for run, tasks in runs.items()}


def _lm_eval_results(run: Path) -> dict:
    """The newest ``results_*.json`` of a run folder (``{}`` where there is none)."""
    found = sorted(run.glob("results_*.json"))
    if not found:
        return {}
    try:
        return json.loads(found[-1].read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(
            f"data: {found[-1]} is not readable JSON ({err}); the lm-eval run is damaged or "
            "truncated: re-run it, or delete the file to name the model by its folder."
        ) from None


def _model_name(run: Path, results: dict) -> str:
    """A run's model: its results' ``model_name``, else ``pretrained=``, else the folder's name."""
    if results.get("model_name"):
        return str(results["model_name"])
    args = results.get("config", {}).get("model_args")
    if isinstance(args, dict) and args.get("pretrained"):
        return str(args["pretrained"])
    if isinstance(args, str):
        for part in args.split(","):
            key, _, value = part.partition("=")
            if key.strip() == "pretrained" and value.strip():
                return value.strip()
    return run.name


def _unique(names: dict[Path, str], root: Path) -> dict[Path, str]:
    """Runs sharing a model name are told apart by their folder."""
    counts: dict[str, int] = {}
    for name in names.values():
        counts[name] = counts.get(name, 0) + 1
    base = root if root.is_dir() else root.parent
    return {
        run: name if counts[name] == 1 else f"{name} ({run.relative_to(base)})"
        for run, name in names.items()
    }


def _sample_lines(path: Path) -> list[tuple[int, dict]]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError(
            f"data: {path} is not UTF-8 text; pass lm-eval's own sample file."
        ) from None
    except OSError as err:
        raise ValueError(f"data: cannot read {path} ({err.strerror or err}).") from None
    fix = "the sample file is damaged or truncated: re-run lm-eval with --log_samples."
    out = json_objects(text, path, fix=fix)
    for no, row in out:
        if "doc_id" not in row or "filtered_resps" not in row:
            raise ValueError(
                f"data: line {no} of {path} is not an lm-eval sample (no doc_id or "
                "filtered_resps); pass the samples_<task>_<date>.jsonl lm-eval wrote."
            )
    if not out:
        raise ValueError(f"data: {path} holds no samples; re-run lm-eval with --log_samples.")
    return out


def _arguments(sample: dict) -> list[tuple]:
    """The requests' arguments as tuples (new logs: dicts ``gen_args_k``; old: lists)."""
    args = sample.get("arguments")
    if isinstance(args, dict):
        keys = sorted(args, key=lambda k: int(k.rsplit("_", 1)[-1]))
        return [tuple(args[k][f"arg_{j}"] for j in range(len(args[k]))) for k in keys]
    return [tuple(a) for a in args or []]


def _question(sample: dict) -> str:
    doc = sample.get("doc")
    if isinstance(doc, dict):
        for key in _QUESTION_FIELDS:
            if isinstance(doc.get(key), str) and doc[key].strip():
                return doc[key]
    args = _arguments(sample)
    return str(args[0][0]) if args and args[0] else ""


def _softmax_max(scores: list[float]) -> float:
    """The largest softmax probability (``-inf`` scores: probability 0)."""
    top = max(scores)
    return 1.0 / sum(math.exp(s - top) for s in scores if s > -math.inf)


def _choice_confidence(sample: dict, where: str, normalisation: str, delimiter: str) -> float:
    """The chosen choice's softmax probability (``acc_mutual_info``: the conditional half)."""
    try:
        lls = [float(r[0]) for r in sample["filtered_resps"]]
    except (TypeError, ValueError, IndexError):
        raise ValueError(
            f"data: {where}: filtered_resps is not a list of (log-likelihood, is_greedy) "
            "pairs; pass a multiple-choice task's samples."
        ) from None
    args = _arguments(sample)
    if "acc_mutual_info" in (sample.get("metrics") or []) and len(lls) % 2 == 0:
        lls, args = lls[: len(lls) // 2], args[: len(lls) // 2]
    if len(lls) < 2 or any(math.isnan(v) or v == math.inf for v in lls) or max(lls) == -math.inf:
        raise ValueError(
            f"data: {where}: the choices' log-likelihoods are missing, NaN or all -inf "
            f"({len(lls)} given); the run is damaged: re-run the task."
        )
    if normalisation == "length":
        if len(args) != len(lls):
            raise ValueError(
                f"data: {where}: {len(lls)} log-likelihoods but {len(args)} logged requests; "
                "length normalisation needs each choice's text (use --choice-norm none)."
            )
        lengths = [max(len(str(a[1]).removeprefix(delimiter)), 1) for a in args]
        lls = [v / k for v, k in zip(lls, lengths, strict=True)]
    return _softmax_max(lls)


def _generative_confidence(sample: dict):
    for holder in (sample, sample.get("doc")):
        value = holder.get("confidence") if isinstance(holder, dict) else None
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    return None


def _is_binary(value) -> bool:
    return isinstance(value, bool) or (isinstance(value, int | float) and value in (0, 1))


def _task_metric(sample: dict, where: str) -> str:
    """A generative task's right/wrong metric: the first 0/1 one of its first sample."""
    names = [m for m in ("exact_match", "acc") if m in sample] + list(sample.get("metrics") or [])
    for name in names:
        if _is_binary(sample.get(name)):
            return name
    raise ValueError(
        f"data: {where} has no right/wrong metric (looked for {', '.join(names) or 'none'}: a "
        "0/1 value); choose a task whose metric is accuracy or exact match."
    )


def _metric(sample: dict, name: str, where: str) -> float:
    value = sample.get(name)
    if not _is_binary(value):
        raise ValueError(
            f"data: {where} has no 0/1 {name!r} (got {value!r}); the confidence is paired with "
            f"that metric's answer: log the task with {name!r}, or use the other --choice-norm."
        )
    return float(value)


def read_lm_eval(path: str | Path, *, normalisation: str = "none") -> Table:
    """lm-evaluation-harness sample files as a long table.

    Args:
      path: one ``samples_<task>_<date>.jsonl`` or a folder searched for them
        (several runs: several models); per run and task the newest file.
      normalisation: ``"none"`` (softmax of the log-likelihoods, ``acc``) or
        ``"length"`` (per character of the choice, ``acc_norm``).

    Returns:
      A :class:`~miscal_jax.app.tables.Table` (see the module docstring).

    Raises:
      ValueError: damaged or truncated files, no usable task, a sample without
        a right/wrong metric, an unknown ``normalisation``.
    """
    if normalisation not in NORMALISATIONS:
        raise ValueError(f"normalisation: expected one of {NORMALISATIONS}, got {normalisation!r}.")
    path = Path(path)
    runs = _lm_eval_runs(path)
    results = {run: _lm_eval_results(run) for run in runs}
    names = _unique({run: _model_name(run, results[run]) for run in runs}, path)
    metric = "acc" if normalisation == "none" else "acc_norm"
    rows, places, skipped, used = [], [], [], {}
    for run, tasks in runs.items():
        configs = results[run].get("configs", {})
        for task, f in sorted(tasks.items()):
            config = configs.get(task, {})
            lines = _sample_lines(f)
            filt = (
                "none"
                if any(s.get("filter") == "none" for _, s in lines)
                else lines[0][1].get("filter")
            )
            lines = [(no, s) for no, s in lines if s.get("filter") == filt]
            kind = config.get("output_type")
            if kind is None:  # no results file: two or more (ll, greedy) pairs are multiple choice
                first = lines[0][1]["filtered_resps"]
                pairs = isinstance(first, list) and len(first) > 1 and isinstance(first[0], list)
                kind = "multiple_choice" if pairs else "generate_until"
            if kind not in ("multiple_choice", "generate_until"):
                skipped.append(f"{names[run]}: {task} ({kind} has no per-item answer)")
                continue
            if kind == "generate_until" and _generative_confidence(lines[0][1]) is None:
                skipped.append(
                    f"{names[run]}: {task} (generative: lm-eval logs no log-probabilities for "
                    "generated text, and its samples carry no 'confidence' field)"
                )
                continue
            delimiter = config.get("target_delimiter", " ")
            task_metric = metric
            if kind == "generate_until":
                task_metric = _task_metric(lines[0][1], f"line {lines[0][0]} of {f}")
            used[task] = task_metric if filt in (None, "none") else f"{task_metric} ({filt})"
            for no, s in lines:
                where = f"line {no} of {f}"
                if kind == "multiple_choice":
                    conf = _choice_confidence(s, where, normalisation, delimiter)
                else:
                    conf = _generative_confidence(s)
                    if conf is None:
                        raise ValueError(
                            f"data: {where} has no numeric 'confidence' field although earlier "
                            "samples of the task do; give every sample one."
                        )
                rows.append(
                    {
                        "item": f"{task}/{s['doc_id']}",
                        "model": names[run],
                        "confidence": conf,
                        "correct": _metric(s, task_metric, where),
                        "text": _question(s),
                        "group": task,
                    }
                )
                places.append(where)
    if not rows:
        raise ValueError(
            f"data: no usable task in {path}: " + "; ".join(skipped) + ". Multiple-choice tasks "
            "give a confidence; for a generative task add a numeric 'confidence' to its samples."
        )
    return _rows_table(
        rows,
        places,
        str(path),
        {"kind": "lm-eval", "normalisation": normalisation, "metrics": used, "skipped": skipped},
    )


# ----------------------------------------------------------------------------- Inspect


def _inspect_reader():
    try:
        from inspect_ai.log import read_eval_log
    except ImportError:
        raise ValueError(
            "data: reading Inspect logs needs inspect_ai (its own log reader); "
            "pip install 'miscal_jax[inspect]'."
        ) from None
    return read_eval_log


def _score_value(score, scorer: str, where: str) -> float:
    v = score.value
    if isinstance(v, str) and v.strip().upper() in _CORRECT:
        return _CORRECT[v.strip().upper()]
    if _is_binary(v):
        return float(v)
    raise ValueError(
        f"data: {where}: scorer {scorer!r} gave {v!r}, not right/wrong (C/I/N, true/false or "
        "1/0); calibration needs a binary outcome, and only the first scorer is read: put a "
        "scorer that marks answers right or wrong first."
    )


def _metadata_confidence(*holders):
    for meta in holders:
        value = (meta or {}).get("confidence")
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    return None


def _logsumexp(values: list[float]) -> float:
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


def _letter_confidence(tokens, letter: str, letters: frozenset):
    """The written letter's probability among the choice letters at its answer token.

    Top log-probabilities of the same letter with and without a leading space
    (``"A"``, ``" A"``) are one outcome: their probabilities add.
    """
    for tok in reversed(tokens):
        if tok.token.strip() != letter:
            continue
        tops: dict[str, list[float]] = {}
        for t in tok.top_logprobs or []:
            if t.token.strip() in letters:
                tops.setdefault(t.token.strip(), []).append(t.logprob)
        if letter not in tops:
            return math.exp(tok.logprob)
        merged = {k: _logsumexp(v) for k, v in tops.items()}
        return math.exp(merged[letter] - _logsumexp(list(merged.values())))
    return None


def _inspect_confidence(sample, score):
    """The sample's confidence, or ``None`` (no metadata value, no usable log-probabilities)."""
    conf = _metadata_confidence(score.metadata, sample.metadata)
    if conf is not None:
        return conf
    output = sample.output
    choice = output.choices[0] if output is not None and output.choices else None
    tokens = choice.logprobs.content if choice is not None and choice.logprobs else None
    if not tokens:
        return None
    if sample.choices:
        letters = frozenset(chr(ord("A") + j) for j in range(len(sample.choices)))
        written = _ANSWER.findall(output.completion or "")  # the letter the model wrote
        letter = written[-1] if written else (score.answer or "").strip()
        return _letter_confidence(tokens, letter, letters) if letter in letters else None
    return math.exp(sum(t.logprob for t in tokens))


def _input_text(sample) -> str:
    if isinstance(sample.input, str):
        return sample.input
    users = [m for m in sample.input if getattr(m, "role", None) == "user"]
    return users[-1].text if users else ""


def _inspect_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    files = sorted(
        p for p in path.rglob("*") if p.suffix in (".eval", ".json") and is_inspect_log(p)
    )
    if not files:
        raise ValueError(
            f"data: {path} holds no Inspect logs (.eval or .json); pass the log folder."
        )
    return files


def _read_log(read_eval_log, f: Path):
    try:
        return read_eval_log(str(f))
    except Exception as err:  # the reader raises many types for damaged logs
        msg = str(err).splitlines()[0][:160] if str(err) else type(err).__name__
        raise ValueError(
            f"data: {f} is not a readable Inspect log ({msg}); the log is damaged or "
            "truncated: re-run the eval, or leave the file out."
        ) from None


def _newest_per_task(logs: list) -> tuple[list, list[str]]:
    """Of several logs of one model on one task, the newest successful one (others noted)."""
    best: dict[tuple, tuple] = {}
    for f, log in logs:
        key = (log.eval.model, log.eval.task)
        rank = (log.status == "success", str(log.eval.created or ""), f.name)
        if key not in best or rank > best[key][0]:
            best[key] = (rank, f, log)
    kept = [(f, log) for _, f, log in best.values()]
    names = {f for f, _ in kept}
    skipped = [
        f"{log.eval.model}: {log.eval.task} ({f.name}: an older or failed run of the same task)"
        for f, log in logs
        if f not in names
    ]
    return sorted(kept, key=lambda item: item[0]), skipped


def read_inspect(path: str | Path) -> Table:
    """Inspect eval logs as a long table (needs ``inspect_ai``).

    Args:
      path: one ``.eval`` / ``.json`` log or a folder searched for them (each
        log: one model on one task; ``inspect eval-set`` manifests are skipped).

    Returns:
      A :class:`~miscal_jax.app.tables.Table` (see the module docstring);
      ``notes["dropped"]`` counts samples without a confidence (no answer, or
      not one letter).

    Raises:
      ValueError: inspect_ai missing, an unreadable log, a non-binary score,
        no log with confidences.
    """
    read_eval_log = _inspect_reader()
    path = Path(path)
    logs, skipped = _newest_per_task(
        [(f, _read_log(read_eval_log, f)) for f in _inspect_files(path)]
    )
    rows, places, dropped = [], [], {}
    for f, log in logs:
        model, task = log.eval.model, log.eval.task
        scored = [s for s in log.samples or [] if s.scores and s.epoch == 1]
        if not scored:
            skipped.append(f"{model}: {task} ({f.name}: {log.status}, no scored samples)")
            continue
        found = []
        for s in scored:
            where = f"sample {s.id!r} of {f}"
            scorer, score = next(iter(s.scores.items()))
            conf = _inspect_confidence(s, score)
            if conf is None:
                continue
            found.append(
                {
                    "item": f"{task}/{s.id}",
                    "model": model,
                    "confidence": conf,
                    "correct": _score_value(score, scorer, where),
                    "text": _input_text(s),
                    "group": task,
                }
            )
            places.append(where)
        if not found:
            skipped.append(
                f"{model}: {task} ({f.name}: no confidence: no 'confidence' in score or sample "
                "metadata and no answer log-probabilities; run with --logprobs and "
                "--top-logprobs at least the number of choices)"
            )
        elif len(found) < len(scored):
            dropped[f"{model}: {task}"] = len(scored) - len(found)
        rows += found
    if not rows:
        raise ValueError(f"data: no usable Inspect log in {path}: " + "; ".join(skipped) + ".")
    notes = {"kind": "inspect", "skipped": skipped, "dropped": dropped}
    return _rows_table(rows, places, str(path), notes)
