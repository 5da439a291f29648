"""Experiment tracking with MLflow's own client: a run per training (params, every epoch, tags, the model), the
registry behind models:/ URIs, evaluation runs, and each epoch logged once."""

import json

import mlflow
import pytest
from mlflow import MlflowClient
from transformers import AutoModelForSequenceClassification

from sam.cli import main
from sam.predict import Predictor
from sam.tracking import RUN_TAG
from sam.train import EpochLogger, train
from tests.helpers import tiny_config


@pytest.mark.slow
def test_a_tracked_run_has_params_every_epoch_tags_and_a_registered_model(ray_session, tweets_dir, tmp_path, tracking):
    config = tiny_config(tweets_dir, epochs=3, patience=10)
    metrics = train(config, tmp_path / "model", storage=str(tmp_path / "runs"), name="tracked", tracked=tracking,
                    register="tiny")

    runs = mlflow.search_runs(experiment_names=["sam"], output_format="list")  # at MLFLOW_TRACKING_URI
    assert len(runs) == 1 and runs[0].info.run_id == metrics["mlflow_run_id"] and runs[0].info.status == "FINISHED"
    run, client = runs[0], MlflowClient(tracking.uri)
    assert run.data.params["d_model"] == "32" and run.data.params["epochs"] == "3" and run.data.params["data"] == str(tweets_dir)
    assert run.data.tags[RUN_TAG] == "tracked" and run.data.tags["sam.rows_kept"] == "90"
    assert run.data.tags["sam.split_seed"] == "42" and "ray_version" in run.data.tags
    accuracy = client.get_metric_history(run.info.run_id, "val_accuracy")
    assert [m.step for m in accuracy] == [1, 2, 3]
    assert [m.value for m in accuracy] == [h["val_accuracy"] for h in metrics["history"]]
    assert {"train_loss", "lr", "samples_per_s", "data_wait_s", "val_macro_f1"} <= set(run.data.metrics)
    assert run.data.metrics["best_val_accuracy"] == metrics["val_accuracy"]

    logged = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="model", tracking_uri=tracking.uri)
    assert AutoModelForSequenceClassification.from_pretrained(logged).config.num_labels == 3

    assert metrics["registered"] == "models:/tiny/1"
    client.set_registered_model_alias("tiny", "champion", "1")
    texts = ["I love this song, amazing", "the bus comes at 8"]
    assert Predictor("models:/tiny@champion").predict(texts) == Predictor(tmp_path / "model").predict(texts)


def test_predict_reads_a_registered_model_and_refuses_an_unknown_one(ray_session, tiny_model_dir, tracking, capsys):
    run_id = tracking.start("registered-by-hand", {}, {})
    tracking.log_model(run_id, str(tiny_model_dir))
    assert tracking.register(run_id, "sentiment") == "models:/sentiment/1"

    assert main(["predict", "--model", "models:/sentiment/1", "what a beautiful morning"]) == 0
    assert json.loads(capsys.readouterr().out)["sentiment"] in {"Negative", "Neutral", "Positive"}
    assert main(["predict", "--model", "models:/sentiment@nowhere", "hi"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "models:/sentiment@nowhere" in error


def test_evaluate_logs_its_metrics_and_confusion_matrix(ray_session, tiny_model_dir, tweets_dir, tracking, capsys):
    assert main(["evaluate", "--model", str(tiny_model_dir), "--data", str(tweets_dir), "--json"]) == 0
    results = json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    run = MlflowClient(tracking.uri).get_run(results["mlflow_run_id"])
    assert run.data.metrics["test_accuracy"] == pytest.approx(results["accuracy"])
    assert run.data.metrics["test_macro_f1"] == pytest.approx(results["macro_f1"])
    assert run.data.metrics["test_n"] == 45 and run.data.tags["sam.model"] == str(tiny_model_dir)
    assert {a.path for a in MlflowClient(tracking.uri).list_artifacts(run.info.run_id)} == {"confusion_matrix.png", "results.json"}


def test_each_epoch_is_logged_once_however_often_it_is_reported(tracking):
    run_id = tracking.start("repeated", {}, {})
    for epoch in (1, 2, 2):
        EpochLogger(tracking.uri, run_id).after_report(None, [{"epoch": epoch, "val_accuracy": 0.5, "stopping": False}], None)
    assert [m.step for m in MlflowClient(tracking.uri).get_metric_history(run_id, "val_accuracy")] == [1, 2]
    assert "stopping" not in MlflowClient(tracking.uri).get_run(run_id).data.metrics  # flags are not metrics
