"""Install a trained LoRA (from either backend) into ComfyUI/SwarmUI and give DevServer an output config for it.

1. pick a checkpoint of the job (the final one, or `epoch=N`);
2. run the one fit check (`devserver_lora.lora.fit`, names and shapes, the same as `inspect-lora --against`)
   against the model it is installed for: the plan's family's model, or `against` (e.g. the test-sized checkpoint a
   local ComfyUI loads). A LoRA ComfyUI would not fully apply is refused before anything is copied; one trained on
   another checkpoint than the family's model (a test-sized one, which the backend records) is refused with the
   `--against` that would install it (issue 12 item 5: a 128-wide LoRA went into a loras folder for SD3.5 Medium);
3. copy it into the loras folder with provenance in its header (dataset card, plan, trigger words, following
   the `modelspec.*` / `ss_*` conventions plus `devserver_lora.*`): tensor bytes identical, atomic, never
   replacing a file (a `-2` suffix instead);
4. write `configs/output/<base>_<name>.json` (top-level `lora` + `parameters.loras`) from a neutral template and
   THIS LoRA's dataset card (title, description and tags under the card's language, trigger words, provenance in
   `meta.provenance`), never from another LoRA's config; validated against the schemas folder's chunks before it is
   written, never replacing an existing config.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from ..config.chunks import chunk_json, own_chunks
from ..config.files import write_output_config
from ..config.make import make_lora_output_config
from ..config.models import NON_IMAGE_NAME_MARKERS, SD35_CHUNK, SD35_TRIPLE_CLIP_CHUNK, non_image_marker
from ..config.validate import tree_problems
from ..errors import ConfigError, JobError, LoraFileError
from ..invocation import train_command
from ..lora.fit import check_fit
from ..lora.header import read_header, write_with_metadata
from ..lora.report import ARCH_KEY, inspect_lora
from ..lora.spec import LoraSpec
from ..paths import atomic_write_text, check_simple_name
from .card import DatasetCard
from .families import get_family

if TYPE_CHECKING:
    from .jobs import Job

PREFIX = "devserver_lora."


class InstallResult(BaseModel):
    job_id: str
    source: str
    lora_path: str
    lora_name: str
    config_name: str | None = None
    config_path: str | None = None
    trigger_words: list[str] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)


def list_checkpoints(job: Job) -> list[Path]:
    return sorted(Path(job.outputs_dir).glob("*.safetensors"))


def pick_checkpoint(job: Job, epoch: int | None = None, checkpoint: str | None = None) -> Path:
    """The final LoRA of a finished job, the checkpoint saved after `epoch`, or one named file of outputs/."""
    name = job.plan.output_name
    outputs = Path(job.outputs_dir)
    available = ", ".join(p.name for p in list_checkpoints(job)) or "none"
    if checkpoint is not None:
        check_simple_name(checkpoint, what="checkpoint file name")
        chosen = outputs / checkpoint
        if not checkpoint.endswith(".safetensors") or not chosen.is_file():
            raise JobError(f"job {job.id} has no checkpoint {checkpoint!r}", hint=f"checkpoints: {available}")
        return chosen
    if epoch is None:
        info = job.info
        final = Path(info["lora_path"]) if info.get("lora_path") else outputs / f"{name}.safetensors"
        if info.get("state") != "done" or not final.is_file():
            raise JobError(
                f"job {job.id} has no final LoRA (state: {info.get('state')})",
                hint=f"wait for it to finish, `resume {job.id}`, or install a saved one with --epoch N or "
                f"--checkpoint FILE (checkpoints: {available})",
            )
        return final
    candidate = outputs / f"{name}-{epoch:06d}.safetensors"
    if candidate.is_file():
        return candidate
    # The last epoch is saved only as the final file (sd-scripts skips its numbered copy).
    final = outputs / f"{name}.safetensors"
    if final.is_file():
        try:
            if read_header(final).metadata.get("ss_epoch") == str(epoch):
                return final
        except LoraFileError:
            pass
    raise JobError(f"job {job.id} has no checkpoint for epoch {epoch}", hint=f"checkpoints: {available}")


NO_CARD = "none"


def job_card(job: Job) -> DatasetCard | None:
    """The job's dataset card, or None when the job has none (jobs made before cards were required)."""
    try:
        return job.card
    except JobError:
        return None


def provenance_metadata(existing: dict[str, str], job: Job, source: Path, card: DatasetCard | None) -> dict[str, str]:
    """The header metadata of the installed copy: the trainer's own entries plus who, what and how."""
    plan = job.plan
    meta = dict(existing)
    trigger_words = [plan.trigger] if plan.trigger else []
    meta["modelspec.title"] = plan.output_name
    if trigger_words:
        meta["modelspec.trigger_phrase"] = ", ".join(trigger_words)
    if card is None:
        meta[f"{PREFIX}card"] = NO_CARD
    else:
        meta["modelspec.description"] = card.description
        meta["modelspec.author"] = card.rights_holder
        meta["modelspec.license"] = card.licence
        meta.update(card.to_metadata())
        meta[f"{PREFIX}card"] = json.dumps(card.model_dump(mode="json"), ensure_ascii=False, sort_keys=True)
    meta[f"{PREFIX}trigger_words"] = json.dumps(trigger_words, ensure_ascii=False)
    meta[f"{PREFIX}plan"] = plan.model_dump_json()
    meta[f"{PREFIX}family"] = plan.family
    meta[f"{PREFIX}job_id"] = job.id
    meta[f"{PREFIX}source_file"] = source.name
    meta.setdefault("ss_output_name", plan.output_name)
    return meta


def install_target(job: Job, against: str | None) -> str:
    """The `lora.fit` name of the model the LoRA is installed for: `against`, else the plan's family's model."""
    return against or get_family(job.plan.family).arch


def trained_on(job: Job, epoch: int | None = None, checkpoint: str | None = None) -> str:
    """The model the job's chosen checkpoint was trained on (`trained_arch` of its header): the `against` of a
    caller that renders with the same base-model files it trained with (the demo, the Studio)."""
    return trained_arch(read_header(pick_checkpoint(job, epoch, checkpoint)).metadata, job)


def trained_arch(metadata: dict[str, str], job: Job) -> str:
    """The model a LoRA was trained on: its own `devserver_lora.arch` label, else what the backend recorded for the
    job's base checkpoint, else the family's model."""
    return metadata.get(ARCH_KEY) or job.info.get("base_arch") or get_family(job.plan.family).arch


_NON_ALNUM = re.compile(r"[^a-z0-9_]+")


def default_config_name(job: Job) -> str:
    plan = job.plan
    base = get_family(plan.family).base_output_config
    return f"{base}_{_NON_ALNUM.sub('_', plan.output_name.lower()).strip('_')}"


def _check_config_name(name: str) -> str:
    check_simple_name(name, what="output config name")
    marker = non_image_marker(name)
    if marker:
        cleaned = name
        for m in NON_IMAGE_NAME_MARKERS:
            cleaned = re.sub(m, "", cleaned, flags=re.IGNORECASE)
        cleaned = re.sub(r"_+", "_", cleaned).strip("_")
        raise ConfigError(
            f"output config name {name!r} contains {marker!r}: DevServer guesses the media type from the config "
            "name and would not treat it as an image",
            hint=f"pass --config-name with a name without {', '.join(NON_IMAGE_NAME_MARKERS)}, e.g. {cleaned!r}",
        )
    return name


def ensure_chunk(schemas_dir: Path, chunk_name: str) -> Path | None:
    """Write one of the project's own chunks into DevServer's chunks/ if it is not there; never replace one."""
    target = schemas_dir / "chunks" / f"{chunk_name}.json"
    if target.exists():
        return None
    chunk, _ = own_chunks()[chunk_name]
    written = atomic_write_text(target, chunk_json(chunk))
    written.chmod(0o644)  # DevServer may run as another user; atomic writes start as 0600
    return written


def provenance(job: Job, card: DatasetCard | None, lora_file: str, base_model: str) -> dict[str, Any]:
    """`meta.provenance` of the config: this LoRA's dataset card and how it was made, nothing of any other LoRA."""
    plan = job.plan
    out: dict[str, Any] = {"lora_file": lora_file, "trained_on": base_model, "job_id": job.id,
                           "trigger_words": [plan.trigger] if plan.trigger else []}
    if card is None:
        out["card"] = NO_CARD
    else:
        out.update(card.model_dump(mode="json", exclude={"per_image", "tags", "language"}, exclude_none=True))
        if card.per_image:
            out["images_with_own_rights"] = len(card.per_image)
    return out


def write_config(
    job: Job,
    lora_file: str,
    *,
    schemas_dir: Path,
    config_name: str,
    strength: float,
    trigger_words: list[str],
    output_chunk: str,
    base_model: str,
) -> Path:
    """Write the LoRA's output config (neutral template + its own dataset card), validated first in a staging copy
    against DevServer's chunks; never replacing an existing config."""
    plan = job.plan
    target = schemas_dir / "configs" / "output" / f"{config_name}.json"
    if target.exists():
        raise ConfigError(f"output config {target} already exists",
                          hint="choose another name with --config-name; an existing config is never replaced")
    card = job_card(job)
    spec = LoraSpec(name=lora_file, strength_model=strength, strength_clip=strength,
                    trigger_words=tuple(trigger_words) or None, target=None)
    cfg = make_lora_output_config(
        config_name, [spec], title=card.title if card else plan.output_name.replace("_", " "),
        model_label=get_family(plan.family).label, base_model=base_model, output_chunk=output_chunk,
        language=card.language if card else None, description=card.description if card else None,
        tags=card.tags if card else (), provenance=provenance(job, card, lora_file, base_model),
    )
    staging = Path(job.work_dir) / "install" / "schemas"
    if staging.exists():
        shutil.rmtree(staging)
    staged = write_output_config(cfg, staging / "configs" / "output" / f"{config_name}.json")
    chunks = schemas_dir / "chunks"
    problems = [p for p in tree_problems([staged, *([chunks] if chunks.is_dir() else [])]) if p.severity == "error"]
    if problems:
        raise ConfigError(f"the generated output config {config_name} does not validate", problems)
    written = write_output_config(cfg, target)
    written.chmod(0o644)  # DevServer may run as another user; atomic writes start as 0600
    return written


def _check_fits(source: Path, target: str, *, trained: str, job_id: str) -> None:
    """The one fit check against the install target; when the LoRA was trained on another model than the target,
    the refusal says which and how to install it for that model instead."""
    try:
        check_fit(source, target, name=source.name)
    except LoraFileError as exc:
        if trained == target:
            raise
        raise LoraFileError(
            f"{exc.message}\n  it was trained on {trained}, not on {target}",
            hint=f"install it where ComfyUI loads that model: `{train_command(f'install {job_id} --against {trained}')}`; "
            f"for {target}, train on {target}'s own checkpoint",
        ) from exc


def install_job(
    job: Job,
    *,
    loras_dir: Path | None,
    schemas_dir: Path | None,
    epoch: int | None = None,
    checkpoint: str | None = None,
    config_name: str | None = None,
    strength: float = 1.0,
    check_keys: bool = True,
    against: str | None = None,
) -> InstallResult:
    """Install a checkpoint of `job` and (where a schemas folder is given) write its output config.

    `against`: the model the LoRA is installed for (a `lora.fit` name such as "sd3:2:te=clip_l" for a test-sized
    checkpoint); default the plan's family's model."""
    if loras_dir is None:
        raise JobError("no loras folder given", hint="pass --loras-dir (ComfyUI's models/loras) or set COMFYUI_LORAS_DIR")
    plan = job.plan
    check_simple_name(plan.output_name, what="LoRA output name")
    source = pick_checkpoint(job, epoch, checkpoint)
    header = read_header(source)  # refuses a file the trainer is still writing
    arch = trained_arch(header.metadata, job)
    target = install_target(job, against)
    warnings: list[str] = []
    if check_keys:
        _check_fits(source, target, trained=arch, job_id=job.id)
    else:
        warnings.append(f"fit check skipped (--no-key-check): {source.name} was not checked against {target}")
    card = job_card(job)
    if card is None:
        warnings.append(
            f"job {job.id} has no dataset card: installed with '{NO_CARD}' recorded as its card; say where the "
            f"images come from and who may use them in {job.dir / 'card.json'} (fields: "
            f"`{train_command('card --help')}`)"
        )
    elif schemas_dir is not None and not card.language:
        warnings.append(
            "the dataset card does not say which language its title and description are in (field `language`), so "
            "the output config shows the card's description under no interface language (it is in meta.provenance)"
        )
    name_for_config = None
    if schemas_dir is not None:
        name_for_config = _check_config_name(config_name or default_config_name(job))
        if (schemas_dir / "configs" / "output" / f"{name_for_config}.json").exists():
            raise ConfigError(f"output config {name_for_config} already exists in {schemas_dir}",
                              hint="choose another name with --config-name; an existing config is never replaced")
    trigger_words = [plan.trigger] if plan.trigger else []
    stem = plan.output_name if epoch is None else f"{plan.output_name}-{epoch:06d}"
    if checkpoint is not None:
        stem = checkpoint.removesuffix(".safetensors")
    metadata = {**provenance_metadata(header.metadata, job, source, card), ARCH_KEY: arch}
    written = write_with_metadata(source, Path(loras_dir) / f"{stem}.safetensors", metadata)
    result = InstallResult(job_id=job.id, source=str(source), lora_path=str(written), lora_name=written.name,
                           trigger_words=trigger_words, warnings=warnings)
    warnings = result.warnings  # pydantic copied the list; append to the result's own
    if schemas_dir is None:
        warnings.append("no DevServer schemas folder given: no output config written (pass --schemas)")
    elif get_family(plan.family).base_output_config != "sd35_large":
        warnings.append(f"output configs are written for SD3.5 Large only; write one for {plan.family} by hand")
    else:
        assert name_for_config is not None
        chunk = SD35_TRIPLE_CLIP_CHUNK if inspect_lora(source).has_text_encoder else SD35_CHUNK
        if chunk == SD35_TRIPLE_CLIP_CHUNK and ensure_chunk(schemas_dir, chunk) is not None:
            warnings.append(
                f"this LoRA trained the text encoders, so its config renders through {chunk} (CLIP-L + CLIP-G + T5); "
                f"copied that chunk into {schemas_dir / 'chunks'}: ComfyUI needs clip_l.safetensors too"
            )
        path = write_config(job, written.name, schemas_dir=schemas_dir, config_name=name_for_config,
                            strength=strength, trigger_words=trigger_words, output_chunk=chunk, base_model=target)
        result.config_name, result.config_path = name_for_config, str(path)
    job.write_json("install.json", result.model_dump(mode="json"))
    return result
