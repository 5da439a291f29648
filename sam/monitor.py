"""`sam monitor`: a prediction log (any size) read by a Ray Data job that sums fixed-bin histograms per block, so
only one small summary per block reaches the driver, then compared with the model's profile (`drift`): label mix,
confidence, token length and unknown-token rate, each with its population stability index. And `sam profile`,
the profile of a model directory that has none (a plain Hugging Face one), from labelled rows."""

from __future__ import annotations

import json
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
import ray.data

from sam import LABELS, SamError
from sam.console import parse_duration
from sam.drift import CONFIDENCE_EDGES, LENGTH_EDGES, PROFILE_FILE, data_profile, histogram, psi, read_profile, write_profile
from sam.locations import deployed_model, model_location
from sam.onnx_export import labelled_texts
from sam.predict import Predictor
from sam.runtimes import check_model_dir
from sam.storage import exists, is_model_uri, ray_data_path, redact

SIGNALS = ("label_mix", "confidence", "token_length", "unknown_rate")


def since_cutoff(since: Optional[str], now: Optional[datetime] = None) -> Optional[datetime]:
    """`24h`, `90m`, `7d`, `30s` before now (UTC); None: the whole log."""
    if not since:
        return None
    return (now or datetime.now(timezone.utc)) - parse_duration(since, "--since")


def _summary(batch: pd.DataFrame, min_confidence: float) -> dict:
    """One model's rows in a block as counts: labels, bins, hours, tokens, and how many were shadow answers."""
    tokens = batch["tokens"].dropna().to_numpy(dtype=np.int64) if "tokens" in batch else np.zeros(0, dtype=np.int64)
    unknown = batch["unknown_tokens"].dropna().to_numpy(dtype=np.int64) if "unknown_tokens" in batch else np.zeros(0, dtype=np.int64)
    confidence = batch["confidence"].to_numpy(dtype=np.float64)
    hours = pd.to_datetime(batch["time"], utc=True).dt.strftime("%Y-%m-%dT%H:00Z")
    return {
        "rows": int(len(batch)),
        "labels": Counter(batch["sentiment"].tolist()),
        "confidence": histogram(confidence, CONFIDENCE_EDGES),
        "confidence_sum": float(confidence.sum()),
        "token_length": histogram(tokens, LENGTH_EDGES),
        "tokens": int(tokens.sum()), "unknown_tokens": int(unknown.sum()),
        "below_confidence": int((confidence < min_confidence).sum()),
        "hours": Counter(hours.tolist()),
        "shadow_rows": int((~_served(batch)).sum()),
    }


def _served(batch: pd.DataFrame) -> pd.Series:
    """Rows a client got; logs from before the `served` column hold only those."""
    if "served" not in batch:
        return pd.Series(True, index=batch.index)
    return batch["served"].fillna(True).astype(bool)


def _since(batch: pd.DataFrame, cutoff: Optional[datetime]) -> pd.DataFrame:
    return batch if cutoff is None else batch[pd.to_datetime(batch["time"], utc=True) >= cutoff]


def _block_summary(batch: pd.DataFrame, cutoff: Optional[datetime], min_confidence: float) -> pd.DataFrame:
    """One block of the log to one row: each model's counts, as JSON."""
    batch = _since(batch, cutoff)
    summary = {model: _summary(part, min_confidence) for model, part in batch.groupby("model")} if len(batch) else {}
    return pd.DataFrame({"summary": [json.dumps(summary)]})


def _empty() -> dict:
    return {"rows": 0, "labels": Counter(), "confidence": np.zeros(len(CONFIDENCE_EDGES) - 1, dtype=np.int64),
            "confidence_sum": 0.0, "token_length": np.zeros(len(LENGTH_EDGES) - 1, dtype=np.int64), "tokens": 0,
            "unknown_tokens": 0, "below_confidence": 0, "hours": Counter(), "shadow_rows": 0}


def _merge(summaries) -> dict[str, dict]:
    total: dict[str, dict] = {}
    for text in summaries:
        for model, part in json.loads(text).items():
            into = total.setdefault(model, _empty())
            for key in ("rows", "tokens", "unknown_tokens", "below_confidence", "confidence_sum", "shadow_rows"):
                into[key] += part[key]
            for key in ("labels", "hours"):
                into[key].update(part[key])
            for key in ("confidence", "token_length"):
                into[key] += np.asarray(part[key], dtype=np.int64)
    return total


def _read_log(log_dir: str) -> ray.data.Dataset:
    if not exists(log_dir):
        raise SamError(f"{redact(log_dir)}: no prediction log there")
    rows = ray.data.read_parquet(ray_data_path(log_dir), file_extensions=["parquet"])
    rows.context.enable_progress_bars = False  # this read's own context: one summary line per block is quick
    return rows


def summarize_log(log_dir: str, since: Optional[str] = None, min_confidence: float = 0.5) -> dict[str, dict]:
    """The log's counts per model, summed over blocks by a Ray Data job: rows, labels, histograms, tokens, hours."""
    summaries = _read_log(log_dir).map_batches(_block_summary, fn_kwargs={"cutoff": since_cutoff(since), "min_confidence": min_confidence},
                                               batch_format="pandas", batch_size=None)
    return _merge(row["summary"] for row in summaries.iter_rows())


def _answer_pairs(batch: pd.DataFrame, cutoff: Optional[datetime]) -> pd.DataFrame:
    """The columns that pair a shadow answer with the served one: a request's id and text."""
    batch = _since(batch, cutoff)
    batch = batch[batch["request_id"].fillna("") != ""]
    return pd.DataFrame({"key": batch["request_id"] + "/" + batch["text_sha256"].fillna(""), "model": batch["model"],
                         "sentiment": batch["sentiment"], "served": _served(batch)})


def _pair(group: pd.DataFrame) -> pd.DataFrame:
    served, shadow = group[group["served"]], group[~group["served"]]
    pairs = [(a.model, b.model, a.sentiment, b.sentiment) for a, b in zip(served.itertuples(), shadow.itertuples())]
    return pd.DataFrame(pairs, columns=["champion", "challenger", "answered", "shadow"])


def shadow_agreement(log_dir: str, since: Optional[str] = None) -> list[dict]:
    """For each champion and shadowing challenger: the texts both answered (paired by request id and text), how
    often they agreed, and the confusion table (the champion's answer, then the challenger's)."""
    cutoff = since_cutoff(since)
    pairs = (_read_log(log_dir).map_batches(_answer_pairs, fn_kwargs={"cutoff": cutoff}, batch_format="pandas")
             .groupby("key").map_groups(_pair, batch_format="pandas")
             .groupby(["champion", "challenger", "answered", "shadow"]).count())
    tables: dict[tuple[str, str], dict] = {}
    for row in pairs.iter_rows():
        table = tables.setdefault((row["champion"], row["challenger"]), {label: dict.fromkeys(LABELS, 0) for label in LABELS})
        table[row["answered"]][row["shadow"]] += row["count()"]
    report = []
    for (champion, challenger), table in sorted(tables.items()):
        compared = sum(sum(row.values()) for row in table.values())
        agreed = sum(table[label][label] for label in LABELS)
        report.append({"champion": redact(champion), "challenger": redact(challenger), "compared": compared,
                       "agreement": agreed / compared, "confusion": table})
    return report


def _share(counts) -> np.ndarray:
    counts = np.asarray(counts, dtype=np.float64)
    return counts / max(counts.sum(), 1)


def _mix(labels: Counter) -> dict[str, float]:
    """Each label's share of the answers, to 4 places."""
    return dict(zip(LABELS, _share([labels.get(label, 0) for label in LABELS]).round(4).tolist()))


def compare(profile: dict, seen: dict, max_psi: float) -> dict:
    """Each signal's reference and production figures and its PSI, and which signals drifted past `max_psi`."""
    reference_mix = [profile["label_mix"][label] for label in LABELS]
    seen_mix = [seen["labels"].get(label, 0) for label in LABELS]
    reference_unknown = profile["unknown_rate"]
    seen_unknown = seen["unknown_tokens"] / max(seen["tokens"], 1)
    lengths = np.asarray(LENGTH_EDGES[:-1]) + np.diff(LENGTH_EDGES).clip(max=64) / 2  # bin middles, the open one capped
    middles = (np.asarray(CONFIDENCE_EDGES[:-1]) + np.asarray(CONFIDENCE_EDGES[1:])) / 2
    signals = {
        "label_mix": {"reference": dict(zip(LABELS, np.round(reference_mix, 4).tolist())),
                      "production": _mix(seen["labels"]),
                      "psi": psi(reference_mix, seen_mix)},
        "confidence": {"reference": float(_share(profile["confidence"]["counts"]) @ middles),
                       "production": float(_share(seen["confidence"]) @ middles),
                       "psi": psi(profile["confidence"]["counts"], seen["confidence"])},
        "token_length": {"reference": float(_share(profile["token_length"]["counts"]) @ lengths),
                         "production": float(_share(seen["token_length"]) @ lengths),
                         "psi": psi(profile["token_length"]["counts"], seen["token_length"])},
        "unknown_rate": {"reference": reference_unknown, "production": seen_unknown,
                         "psi": psi([reference_unknown, 1 - reference_unknown], [seen_unknown, 1 - seen_unknown])},
    }
    if not seen["tokens"]:  # a log written without token counts: nothing to compare
        for name in ("token_length", "unknown_rate"):
            signals[name]["psi"] = None
    drifted = [name for name, figures in signals.items() if figures["psi"] is not None and figures["psi"] > max_psi]
    return {"signals": signals, "drifted": drifted}


def plot_drift(profile: dict, seen: dict, signals: dict, path: str | Path) -> None:
    """The four distributions, the model's validation split beside production, each titled with its PSI
    (`signals`: `compare`'s)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 4, figsize=(16, 3.6))
    panels = [("predicted label", list(LABELS), list(signals["label_mix"]["reference"].values()),
               list(signals["label_mix"]["production"].values())),
              ("confidence", [f"{e:.2f}" for e in CONFIDENCE_EDGES[:-1]], _share(profile["confidence"]["counts"]), _share(seen["confidence"])),
              ("tokens", [str(e) for e in LENGTH_EDGES[:-1]], _share(profile["token_length"]["counts"]), _share(seen["token_length"])),
              ("unknown tokens", ["rate"], [signals["unknown_rate"]["reference"]], [signals["unknown_rate"]["production"]])]
    for axis, signal, (title, ticks, reference, production) in zip(axes, SIGNALS, panels):
        x = np.arange(len(ticks))
        axis.bar(x - 0.2, reference, 0.4, label="validation (profile)")
        axis.bar(x + 0.2, production, 0.4, label="production (log)")
        axis.set_xticks(x, ticks, rotation=90 if len(ticks) > 4 else 0, fontsize=7)
        psi_value = signals[signal]["psi"]
        axis.set_title(title if psi_value is None else f"{title} (PSI {psi_value:.3f})")
    axes[0].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def monitor_profile(model: Optional[str], by_model: dict[str, dict]) -> tuple[str, dict, dict]:
    """The model to compare (`model`, else the one model that answered clients), its profile and its counts."""
    if model is None:
        answering = sorted(name for name, seen in by_model.items() if seen["rows"] > seen["shadow_rows"])
        if len(answering) != 1:
            raise SamError(f"the log holds {len(answering)} models ({', '.join(answering) or 'none'}): name one with --model")
        (model,) = answering
    name = deployed_model(model)[1] if model not in by_model else model
    if name not in by_model:
        raise SamError(f"{redact(model)}: not in the log, which holds {', '.join(sorted(by_model))}")
    directory = check_model_dir(model_location(model))
    profile = read_profile(directory)
    if profile is None:
        raise SamError(f"{redact(model)}: no {PROFILE_FILE}; write one with: sam profile {redact(model)} --data SOURCE")
    return model, profile, by_model[name]


def monitor(log_dir: str, since: Optional[str], model: Optional[str], max_psi: float, min_confidence: float,
            plot: str | Path) -> dict:
    """`sam monitor`'s work: the log summed, compared with the profile, the plot written; its summary."""
    by_model = summarize_log(log_dir, since, min_confidence)
    if not by_model:
        raise SamError(f"{redact(log_dir)}: no predictions logged{' in the last ' + since if since else ''}")
    model, profile, seen = monitor_profile(model, by_model)
    report = compare(profile, seen, max_psi)
    plot_drift(profile, seen, report["signals"], plot)
    per_model = {redact(name): {"rows": m["rows"], "shadow_rows": m["shadow_rows"], "label_mix": _mix(m["labels"]),
                                "mean_confidence": round(m["confidence_sum"] / max(m["rows"], 1), 4)} for name, m in by_model.items()}
    shadowed = any(m["shadow_rows"] for m in by_model.values())
    return {"log": redact(log_dir), "model": redact(model), "rows": seen["rows"], "since": since,
            "below_confidence": seen["below_confidence"] / seen["rows"], "rows_per_hour": dict(sorted(seen["hours"].items())),
            "per_model": per_model, "shadow": shadow_agreement(log_dir, since) if shadowed else [],
            "psi": {name: figures["psi"] for name, figures in report["signals"].items()}, "drifted": report["drifted"],
            "plot": str(plot), "signals": report["signals"]}




def report_table(summary: dict) -> str:
    """Each signal on the validation split and in production, and its PSI."""
    lines = [f"{'signal':<14}{'validation':>28}{'production':>28}{'PSI':>8}   (label mix: {' '.join(LABELS)})"]
    for name, figures in summary["signals"].items():
        shown = [" ".join(f"{share:.2f}" for share in figures[side].values()) if isinstance(figures[side], dict)
                 else f"{figures[side]:.4f}" for side in ("reference", "production")]
        lines.append(f"{name:<14}{shown[0]:>28}{shown[1]:>28}{'n/a' if figures['psi'] is None else format(figures['psi'], '.3f'):>8}")
    lines.append(f"{summary['rows']} rows; {summary['below_confidence']:.1%} answered below the confidence floor")
    if len(summary["per_model"]) > 1:
        lines.append(f"{'model':<40}{'rows':>9}{'shadow':>9}{'confidence':>12}   label mix ({' '.join(LABELS)})")
        for name, figures in summary["per_model"].items():
            lines.append(f"{name[-40:]:<40}{figures['rows']:>9}{figures['shadow_rows']:>9}{figures['mean_confidence']:>12.3f}   "
                         + " ".join(f"{share:.2f}" for share in figures["label_mix"].values()))
    for pair in summary["shadow"]:
        lines.append(f"shadow: {pair['challenger']} agreed with {pair['champion']} on {pair['agreement']:.1%} of {pair['compared']} texts")
        lines.append(f"{'answered / shadow':<20}" + "".join(f"{label:>10}" for label in LABELS))
        lines.extend(f"{label:<20}" + "".join(f"{pair['confusion'][label][other]:>10}" for other in LABELS) for label in LABELS)
    return "\n".join(lines)


def add_profile(model: str, source: str) -> dict:
    """`sam profile`: the profile of `model` on `source`'s labelled rows, written beside its metrics.json."""
    location = model_location(model)
    if is_model_uri(location):
        raise SamError(f"{redact(model)}: its files are in MLflow's artifact store, which SAM does not write to; "
                       "profile a copy of the directory")
    predictor = Predictor(check_model_dir(location))
    found = labelled_texts(predictor.directory, source)
    if found is None:
        raise SamError(f"{redact(model)}: no sam_config.json names its data: give --data, labelled rows to profile it on")
    texts, labels = found
    profile = data_profile(*predictor.token_counter()(texts), predictor.scores(texts), labels)
    write_profile(location, profile)
    return profile
