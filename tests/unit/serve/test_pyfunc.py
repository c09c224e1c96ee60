"""orchestrator.serve.pyfunc: a trial saved as an mlflow.pyfunc model loads with MLflow's own loader and
predicts exactly what the pipeline's ``predict`` does, for pair tasks, text-to-text models and the
linear probe; it says which column is missing."""

from __future__ import annotations

import mlflow
import pandas as pd
import pytest
from helpers.models import encoder, small
from helpers.served import pyfunc_dir

from orchestrator.method.targets import load_trial_model, task_id_of
from orchestrator.method.train import predict, predict_texts
from orchestrator.serve.pyfunc import METADATA_KEY, PREDICTION, card_of_metadata


def frame(data, columns) -> pd.DataFrame:
    return pd.DataFrame([dict(zip(columns, ex.texts)) for ex in data.test])


def reference(trial, method: str, model_dir: str, data, task_type: str = "SEQ_CLS") -> list[int]:
    """What the pipeline's evaluation predicts for the test split, from the same saved trial."""
    model = load_trial_model(method, model_dir, task_type, data.num_labels, 0, str(trial))
    return predict(model, data.test, encoder(model_dir, task_type), data.label_words, task_id_of(method))


@pytest.mark.parametrize("method", ["mpt", "head_only"])
def test_a_pair_task_model_predicts_what_the_pipeline_predicts(bert_dir, tmp_path, method):
    data = small("topic_match")
    path = pyfunc_dir(tmp_path, bert_dir, data, method=method)
    model = mlflow.pyfunc.load_model(str(path))
    assert [c.name for c in model.metadata.signature.inputs] == ["text", "text_pair"]
    out = model.predict(frame(data, ["text", "text_pair"]))
    assert list(out.columns) == [PREDICTION] and len(out) == len(data.test)
    assert out[PREDICTION].tolist() == [data.label_names[i] for i in reference(tmp_path / "trial", method, bert_dir, data)]

    probs = model.predict(frame(data, ["text", "text_pair"]), params={"probabilities": True})
    columns = [f"prob_{name}" for name in data.label_names]
    assert list(probs.columns) == [PREDICTION, *columns]
    assert probs[columns].sum(axis=1).round(5).eq(1).all()
    assert probs[columns].idxmax(axis=1).str.removeprefix("prob_").tolist() == out[PREDICTION].tolist()


def test_a_missing_text_column_is_named(bert_dir, tmp_path):
    data = small("topic_match")
    model = mlflow.pyfunc.load_model(str(pyfunc_dir(tmp_path, bert_dir, data)))
    with pytest.raises(Exception, match="text_pair"):
        model.predict(pd.DataFrame({"text": ["a fine film"]}))


def test_a_text_to_text_model_returns_the_generated_label_word(t5_dir, tmp_path):
    data = small("review_polarity")
    model = mlflow.pyfunc.load_model(str(pyfunc_dir(tmp_path, t5_dir, data, base="tiny:t5", task_type="SEQ_2_SEQ_LM")))
    out = model.predict(frame(data, ["text"]))[PREDICTION].tolist()
    trial = load_trial_model("mpt", t5_dir, "SEQ_2_SEQ_LM", data.num_labels, 0, str(tmp_path / "trial"))
    ref = predict_texts(trial, [ex.texts for ex in data.test], encoder(t5_dir, "SEQ_2_SEQ_LM"), data.label_words, 0)
    # a generated label word comes back as the word, anything else as generated (what evaluation counts wrong)
    assert out == [data.label_words[i] if i >= 0 else t.strip() for i, t in zip(ref.ids, ref.texts)]
    assert len(out) == len(data.test)
    with pytest.raises(Exception, match="no class probabilities"):
        model.predict(frame(data, ["text"]), params={"probabilities": True})


def test_the_card_is_read_back_from_the_mlmodel_metadata(bert_dir, tmp_path):
    data = small("review_polarity")
    info = mlflow.models.get_model_info(str(pyfunc_dir(tmp_path, bert_dir, data)))
    card = card_of_metadata(info.metadata)
    assert card is not None and card.task == "review_polarity" and card.label_names == data.label_names
    assert card.text_columns == ["text"] and card.base_model == "tiny:bert" and card.method == "mpt"
    assert card_of_metadata(None) is None and card_of_metadata({METADATA_KEY: {"task": "x"}}) is None


def test_a_model_saved_before_the_serve_package_still_loads(bert_dir, tmp_path):
    """Models saved by earlier versions name ``orchestrator.serving`` in their entry point."""
    data = small("topic_match")
    path = pyfunc_dir(tmp_path, bert_dir, data)
    (entry,) = [f for f in path.rglob("*.py") if "orchestrator.serve.pyfunc" in f.read_text()]
    entry.write_text(entry.read_text().replace("orchestrator.serve.pyfunc", "orchestrator.serving"))
    out = mlflow.pyfunc.load_model(str(path)).predict(frame(data, ["text", "text_pair"]))
    assert out[PREDICTION].tolist() == [data.label_names[i] for i in reference(tmp_path / "trial", "mpt", bert_dir, data)]
