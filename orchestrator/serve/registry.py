"""Best trials as registered MLflow models: logged on the trial's run, versioned, tagged, and the
``champion`` alias moved only by a better validation value.

Everything goes through ``MlflowClient`` with an explicit tracking URI (as in ``tracking.py``), so it
works the same against the local SQLite store and an ``mlflow server``, from any Ray worker.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import (INVALID_PARAMETER_VALUE, RESOURCE_ALREADY_EXISTS, RESOURCE_DOES_NOT_EXIST,
                                          ErrorCode)
from mlflow.tracking import MlflowClient

from ..data import TaskData
from ..method.models import hub_revision
from ..spec.methods import REFERENCE, family
from ..spec.schema import RegistrySpec
from ..tracking import (FINGERPRINT_TAG, METHOD_TAG, METRIC_TAG, MODEL_ARTIFACT, PIPELINE_TAG, TASK_TAG, TEST_TAG,
                        VALIDATION_TAG)
from . import pyfunc

CHAMPION = "champion"

log = logging.getLogger(__name__)


def model_name(registry: RegistrySpec, experiment: str, task: str, method: str) -> str:
    """The registered model a best trial becomes a version of: one name per target for MPT, one per
    target and method family for the baselines."""
    fam = family(method)
    template = registry.name if fam == REFERENCE else registry.baseline_name
    return template.format(experiment=experiment, task=task, method=fam)


def should_register(registry: RegistrySpec, method: str) -> bool:
    return registry.enabled and (family(method) == REFERENCE or registry.baselines)


def _code(err: MlflowException) -> int:
    return ErrorCode.Value(err.error_code) if isinstance(err.error_code, str) else err.error_code


def champion(client: MlflowClient, name: str) -> ModelVersion | None:
    """The version the ``champion`` alias points to, or None when no version holds it yet."""
    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException as err:
        # SQLite says the alias is an invalid parameter, the REST store that it does not exist
        if _code(err) in (RESOURCE_DOES_NOT_EXIST, INVALID_PARAMETER_VALUE):
            return None
        raise


def promote(client: MlflowClient, name: str, version: ModelVersion) -> tuple[bool, str]:
    """Move ``champion`` to ``version`` when its validation value is strictly greater than the
    champion's (ties keep the older one); returns whether it moved and why."""
    current = champion(client, name)
    value = float(version.tags[VALIDATION_TAG])
    if current is None:
        client.set_registered_model_alias(name, CHAMPION, version.version)
        return True, "first version"
    old = current.tags.get(VALIDATION_TAG)
    if old is None or current.tags.get(METRIC_TAG) != version.tags.get(METRIC_TAG):
        return False, (f"champion v{current.version} is not scored by {version.tags.get(METRIC_TAG)}: not "
                       "comparable, alias left (move it by hand if this version should serve)")
    if value > float(old):
        client.set_registered_model_alias(name, CHAMPION, version.version)
        return True, f"validation {value:.4g} > champion v{current.version}'s {float(old):.4g}"
    return False, f"validation {value:.4g} <= champion v{current.version}'s {float(old):.4g}: alias left"


def register(uri: str, run_id: str, name: str, model_dir: Path, tags: dict[str, str]) -> tuple[ModelVersion, bool, str]:
    """Log the pyfunc model at ``model_dir`` on run ``run_id``, make it a new version of ``name`` with
    ``tags``, and apply the alias rule; returns the version, whether it is champion now, and why."""
    client = MlflowClient(uri)
    client.log_artifacts(run_id, str(model_dir), MODEL_ARTIFACT)
    try:
        client.create_registered_model(name, tags={TASK_TAG: tags[TASK_TAG]} if TASK_TAG in tags else None)
    except MlflowException as err:
        if _code(err) != RESOURCE_ALREADY_EXISTS:
            raise
    version = client.create_model_version(name, f"runs:/{run_id}/{MODEL_ARTIFACT}", run_id=run_id, tags=tags)
    moved, why = promote(client, name, version)
    return version, moved, why


def register_best(ctx, task: str, method: str, data: TaskData, saved_dir: str, run_id: str,
                  metrics: dict[str, float]) -> str:
    """A target's chosen trial (files in ``saved_dir``, scored in ``metrics``) as a registered pyfunc
    model; returns ``models:/NAME/VERSION``. ``ctx`` is the stage's ``PipelineContext``."""
    spec = ctx.spec
    card = pyfunc.ModelCard.of(spec, task, data, method, hub_revision(ctx.model_dir))
    name = model_name(spec.registry, spec.experiment_name(), task, method)
    value = next(v for k, v in metrics.items() if k.startswith("eval_"))
    test = next(v for k, v in metrics.items() if k.startswith("test_"))
    tags = {PIPELINE_TAG: ctx.tracking.pipeline_run, TASK_TAG: task, METHOD_TAG: method, METRIC_TAG: data.metric,
            VALIDATION_TAG: repr(value), TEST_TAG: repr(test), FINGERPRINT_TAG: ctx.fingerprints[f"target:{task}"]}
    with tempfile.TemporaryDirectory() as tmp:
        path = pyfunc.save(Path(tmp) / MODEL_ARTIFACT, card, saved_dir, pyfunc.input_example(card, data))
        version, moved, why = register(ctx.tracking.uri, run_id, name, path, tags)
    log.info("[target:%s] %s registered as %s version %s (%s)%s", task, family(method), name, version.version, why,
             f"; serving as models:/{name}@{CHAMPION}" if moved else "")
    return f"models:/{name}/{version.version}"
