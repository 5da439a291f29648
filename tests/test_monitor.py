"""`sam profile` and `sam monitor`: a log of the texts the model was profiled on shows no drift; a log of words it
never saw drifts on the unknown-token rate and exits 1 naming it; `--since` leaves older rows out; the figures go
to MLflow; and the log reads as data."""

import json
import shutil
from datetime import datetime, timedelta, timezone

import pyarrow
import pyarrow.parquet
import pytest

from sam.cli import main
from sam.drift import PROFILE_FILE
from sam.monitor import since_cutoff
from sam.predict import Predictor
from sam.prediction_log import SCHEMA, LogSettings, PredictionLog
from tests.helpers import TINY_OPTIONS, tweet_rows

PREDICTION = {"sentiment": "Neutral", "label": 1, "confidence": 0.5, "scores": {"Negative": 0.25, "Neutral": 0.5, "Positive": 0.25}}
GIBBERISH = [f"zqx{i} vlorp{i} brrrt{i} quaxx{i} snerf{i}" for i in range(40)]


@pytest.fixture(scope="module")
def profiled_model(ray_session, tiny_model_dir, tweets_dir, tmp_path_factory):
    model = tmp_path_factory.mktemp("profiled") / "model"
    shutil.copytree(tiny_model_dir, model)
    (model / PROFILE_FILE).unlink(missing_ok=True)
    assert main(["profile", str(model), "--data", str(tweets_dir)]) == 0
    return model


def write_log(log_dir, model, texts, requests=4):
    predictor = Predictor(model)
    log = PredictionLog(LogSettings(log_dir=str(log_dir), log_flush_s=3600), str(model), "hash", count_tokens=predictor.token_counter())
    for part in range(requests):
        chunk = texts[part::requests]
        log.add(f"request-{part}", chunk, predictor.predict(chunk), 0.01)
    log.close()
    return log_dir


def monitor(capsys, *args):
    code = main(["monitor", *args])
    captured = capsys.readouterr()
    return code, json.loads(captured.out.strip().splitlines()[-1]), captured.err


def profiled_texts(tweets_dir) -> list[str]:
    return [json.loads(line)["text"] for line in (tweets_dir / "train.jsonl").read_text().splitlines()]


def test_a_profile_holds_what_the_model_learned(profiled_model, tweets_dir):
    profile = json.loads((profiled_model / PROFILE_FILE).read_text())
    assert profile["rows"] == len(profiled_texts(tweets_dir))
    assert sum(profile["true_label_mix"].values()) == pytest.approx(1.0, abs=1e-5) == sum(profile["label_mix"].values())
    assert sum(profile["token_length"]["counts"]) == sum(profile["confidence"]["counts"]) == profile["rows"]
    assert 0 <= profile["unknown_rate"] < 0.5


def test_the_profiled_texts_do_not_drift_and_unseen_words_do(profiled_model, tweets_dir, tmp_path, capsys):
    texts = profiled_texts(tweets_dir)
    same = write_log(tmp_path / "same", profiled_model, texts)
    code, summary, _ = monitor(capsys, "--log", str(same), "--plot", str(tmp_path / "same.png"))
    assert code == 0 and summary["rows"] == len(texts) and not summary["drifted"]
    assert all(value < 0.05 for value in summary["psi"].values()), summary["psi"]
    assert summary["model"] == str(profiled_model) and sum(summary["rows_per_hour"].values()) == len(texts)
    assert (tmp_path / "same.png").stat().st_size > 0

    drifted = write_log(tmp_path / "drifted", profiled_model, GIBBERISH)
    code, summary, err = monitor(capsys, "--log", str(drifted), "--plot", str(tmp_path / "drifted.png"))
    assert code == 1 and "unknown_rate" in summary["drifted"] and summary["psi"]["unknown_rate"] > 0.2
    assert err.startswith("sam monitor: drift: ") and "unknown_rate (PSI " in err


def test_since_leaves_older_rows_out_and_the_figures_reach_mlflow(profiled_model, tmp_path, capsys, tracking):
    texts = [row["text"] for row in tweet_rows()]
    log_dir = write_log(tmp_path / "log", profiled_model, texts)
    old = datetime.now(timezone.utc) - timedelta(days=3)
    rows = [{"time": old, "request_id": "old", "model": str(profiled_model), "model_hash": "hash", "text": "old news",
             "text_sha256": "0", "sentiment": "Neutral", "confidence": 0.5, "scores": {"Negative": 0.25, "Neutral": 0.5, "Positive": 0.25},
             "latency_ms": 1.0, "tokens": 4, "unknown_tokens": 0}] * 5
    partition = log_dir / old.strftime("date=%Y-%m-%d/hour=%H")
    partition.mkdir(parents=True)
    pyarrow.parquet.write_table(pyarrow.Table.from_pylist(rows, schema=SCHEMA), partition / "old.parquet")

    assert monitor(capsys, "--log", str(log_dir), "--plot", str(tmp_path / "all.png"))[1]["rows"] == len(texts) + 5
    code, summary, _ = monitor(capsys, "--log", str(log_dir), "--since", "24h", "--plot", str(tmp_path / "recent.png"))
    assert summary["rows"] == len(texts)
    run = tracking.client.get_run(summary["mlflow_run_id"])
    assert run.data.metrics["rows"] == len(texts) and "psi_label_mix" in run.data.metrics


def test_bad_arguments_are_one_line(profiled_model, tmp_path, capsys):
    assert main(["monitor", "--log", str(tmp_path / "none")]) == 2
    assert "no prediction log there" in capsys.readouterr().err
    with pytest.raises(Exception, match="expected a number and a unit"):
        since_cutoff("yesterday")


def test_a_log_of_one_label_drifts_on_the_label_mix(profiled_model, tmp_path, capsys):
    """The tiny model answers Neutral to everything, so its log is written by hand: every answer Negative."""
    now = datetime.now(timezone.utc)
    rows = [{"time": now, "request_id": f"r{i}", "model": str(profiled_model), "model_hash": "hash", "text": f"bad {i}",
             "text_sha256": "0", "sentiment": "Negative", "confidence": 0.34, "scores": {"Negative": 0.34, "Neutral": 0.33, "Positive": 0.33},
             "latency_ms": 1.0, "tokens": 12, "unknown_tokens": 0} for i in range(50)]
    partition = tmp_path / "log" / now.strftime("date=%Y-%m-%d/hour=%H")
    partition.mkdir(parents=True)
    pyarrow.parquet.write_table(pyarrow.Table.from_pylist(rows, schema=SCHEMA), partition / "negative.parquet")
    code, summary, err = monitor(capsys, "--log", str(tmp_path / "log"), "--plot", str(tmp_path / "negative.png"))
    assert code == 1 and "label_mix" in summary["drifted"] and summary["psi"]["label_mix"] > 1
    assert summary["per_model"] == {str(profiled_model): {"rows": 50, "shadow_rows": 0, "mean_confidence": 0.34,
                                                          "label_mix": {"Negative": 1.0, "Neutral": 0.0, "Positive": 0.0}}}
    assert "label_mix (PSI " in err and summary["shadow"] == []


def test_a_shadowed_log_compares_its_champion_and_reports_the_two_models_agreement(profiled_model, tmp_path, capsys):
    """A champion's answers and a challenger's shadow answers to the same requests: the drift report is the
    champion's alone, and the shadow's agreement and confusion come from pairing rows by request and text."""
    texts = [f"tweet number {i}" for i in range(30)]
    answered = ["Neutral"] * 30
    shadowed = ["Neutral"] * 20 + ["Positive"] * 6 + ["Negative"] * 4
    for model, labels, served in ((str(profiled_model), answered, True), ("models:/rival/2", shadowed, False)):
        log = PredictionLog(LogSettings(log_dir=str(tmp_path / "log"), log_flush_s=3600), model, "hash")
        for i in range(0, 30, 3):  # ten requests of three texts
            log.add(f"request-{i}", texts[i:i + 3], [{**PREDICTION, "sentiment": label} for label in labels[i:i + 3]], 0.01, served=served)
        log.close()
    code, summary, _ = monitor(capsys, "--log", str(tmp_path / "log"), "--plot", str(tmp_path / "shadow.png"))
    assert summary["model"] == str(profiled_model) and summary["rows"] == 30
    assert summary["per_model"]["models:/rival/2"]["shadow_rows"] == 30
    assert summary["per_model"]["models:/rival/2"]["label_mix"] == {"Negative": round(4 / 30, 4), "Neutral": round(20 / 30, 4), "Positive": 0.2}
    (pair,) = summary["shadow"]
    assert (pair["champion"], pair["challenger"], pair["compared"]) == (str(profiled_model), "models:/rival/2", 30)
    assert pair["agreement"] == pytest.approx(20 / 30)
    assert pair["confusion"]["Neutral"] == {"Negative": 4, "Neutral": 20, "Positive": 6}


@pytest.mark.slow
def test_the_log_is_data_scored_again_and_trained_on_after_a_label_join(profiled_model, tmp_path, capsys):
    import pyarrow.dataset as ds

    texts = [row["text"] for row in tweet_rows()]
    log_dir = write_log(tmp_path / "log", profiled_model, texts)
    assert main(["predict", "--data", str(log_dir), "--model", str(profiled_model), "--output", str(tmp_path / "again")]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["rows"] == len(texts) and not summary["rejected"]

    # docs/monitoring.md's join: a labelling tool's export (request_id, label) joined onto the log
    log = ds.dataset(str(log_dir), format="parquet", partitioning="hive").to_table(columns=["request_id", "text"])
    by_request = {}
    for row in tweet_rows():
        by_request.setdefault(next(f"request-{i}" for i in range(4) if row["text"] in texts[i::4]), []).append(row["label"])
    labels = pyarrow.table({"request_id": [f"request-{i}" for i in range(4)], "label": [max(set(v), key=v.count) for v in
                                                                                       (by_request[f"request-{i}"] for i in range(4))]})
    (tmp_path / "relabelled").mkdir()
    pyarrow.parquet.write_table(log.join(labels, "request_id"), tmp_path / "relabelled" / "train.parquet")
    assert main(["train", "--data", str(tmp_path / "relabelled"), *TINY_OPTIONS, "--epochs", "1", "--output", str(tmp_path / "next"),
                 "--storage", str(tmp_path / "runs")]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["n_train"] > 0
