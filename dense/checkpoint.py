"""Checkpoints written by train.py: what they hold, how a model is rebuilt from one, atomic writes.

A checkpoint is a Lightning checkpoint (a plain dict, loadable with weights_only=True) with:
- "state_dict": the LightningModule's weights, i.e. `model.head.*` — and `model.backbone.*` only when
  the backbone cannot be rebuilt from a file: a frozen ViT-g from its weights file is not copied into
  every checkpoint, so checkpoints stay megabytes, not gigabytes. (train.py writes a random-initialised
  backbone once to `checkpoints/backbone_init.pth` and points its checkpoints at it, so it never takes
  the stored path; a LightningModule used outside train.py does.)
- "dense_model": the build_model arguments (backbone, head, weights source, layers, head options),
  so a checkpoint always rebuilds the exact model that wrote it; of a segmentation head, also the names
  and palette of its classes (the dataset's), for predict.py and the notebooks (not build arguments).
"""

from __future__ import annotations

import errno
import os

import torch

import heads
from dense.backbones import BACKBONES
from dense.core import schema
from dense.core.errors import WeightsError, WriteError, shown
from dense.core.hashing import file_sha256
from dense.core.plain import plain_value_problem
from dense.core.weights_file import load_weights_file, tensor_problem
from dense.model import DenseModel, build_model
from dense.multi_head import SHARED_KEYS, MultiHeadModel, check_head_names, part_configs

MODEL_KEY = "dense_model"
BACKBONE_PREFIX = "model.backbone."
HEAD_PREFIX = "model.head."
MULTI_HEAD_PREFIX = "model.heads."  # + <name>.: the heads of a multi-head model


def backbone_is_stored(config: dict) -> bool:
    """The backbone goes into the checkpoint only when nothing else can rebuild it."""
    return not config.get("pretrained") and not config.get("backbone_weights")


def strip_frozen_backbone(checkpoint: dict, config: dict) -> None:
    """Drop the frozen backbone's weights from a checkpoint when a file or the hub can rebuild them."""
    checkpoint[MODEL_KEY] = dict(config)
    if not backbone_is_stored(config):
        state = checkpoint["state_dict"]
        for key in [k for k in state if k.startswith(BACKBONE_PREFIX)]:
            del state[key]


def restore_frozen_backbone(checkpoint: dict, model: DenseModel) -> None:
    """Put the (rebuilt) backbone's weights back before Lightning's strict load_state_dict."""
    state = checkpoint["state_dict"]
    if not any(k.startswith(BACKBONE_PREFIX) for k in state):
        for key, value in model.backbone.state_dict().items():
            state[BACKBONE_PREFIX + key] = value


def read_model_config(path: str | os.PathLike) -> tuple[dict, dict]:
    """(checkpoint, its dense_model config), both checked to be what train.py writes: a state dict of
    tensors and a config of plain values under known keys. A crafted file gets a one-line WeightsError
    naming it."""
    where = os.fspath(path)
    checkpoint = load_weights_file(path)
    if not isinstance(checkpoint, dict) or MODEL_KEY not in checkpoint or "state_dict" not in checkpoint:
        raise WeightsError(
            f"{where} is not a checkpoint written by train.py (no '{MODEL_KEY}' entry); "
            "for Meta's released head files use build_model(..., head_weights=PATH)"
        )
    state = checkpoint["state_dict"]
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise WeightsError(
            f"{where}: its state_dict is not a mapping of names to tensors (not written by train.py)"
        )
    check_model_config(checkpoint[MODEL_KEY], where)
    return checkpoint, checkpoint[MODEL_KEY]


# The dense_model keys that are not head options, with their types: schema.ModelRecord. The other keys
# must be options of the stored head (HeadSpec.options) or its depth range: nothing else reaches
# build_model (a stored `head_weights` would make it open a path).
RECORD_KEYS = set(schema.field_names(schema.ModelRecord))


# What a segmentation record says of its classes besides the build arguments: one name and one
# [r, g, b] per class (the training dataset's, dense/tasks/segmentation.py record_classes).
CLASS_KEYS = ("class_names", "palette")
MAX_CLASS_NAME = 200  # characters: a name is a label in a legend, not a payload


def build_arguments(config: dict) -> dict:
    """A stored single-head record without its class names and palette: what build_model takes."""
    return {k: v for k, v in config.items() if k not in CLASS_KEYS}


def check_classes(config: dict, where: str) -> None:
    """A record's class names and palette, as train.py writes them: lists of one entry per class
    (num_classes), names short strings, colours [r, g, b] of ints 0–255. Anything else is refused in
    one line: a crafted checkpoint must not make predict.py draw with what it did not expect."""
    count = config.get("num_classes")
    for key in CLASS_KEYS:
        if key not in config:
            continue
        value = config[key]
        if (
            not isinstance(value, list)
            or isinstance(count, bool)
            or not isinstance(count, int)
            or len(value) != count
        ):
            raise WeightsError(
                f"{where}: {MODEL_KEY}.{key} is {shown(value)}, not a list of one entry for each of its "
                f"{shown(count)} classes"
            )
        for index, item in enumerate(value):
            if key == "class_names":
                fits = is_class_name(item)
            else:
                fits = (
                    isinstance(item, list)
                    and len(item) == 3
                    and all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255 for c in item)
                )
            if not fits:
                wanted = (
                    f"a printable name of at most {MAX_CLASS_NAME} characters"
                    if key == "class_names"
                    else "[r, g, b] of ints 0–255"
                )
                raise WeightsError(f"{where}: {MODEL_KEY}.{key}[{index}] is {shown(item)}, not {wanted}")


def is_class_name(value) -> bool:
    """A class name a checkpoint may carry: a short string with no control or format characters (a
    crafted name must not move the cursor, end a line or reverse the text in a log, a legend or
    classes.json)."""
    return isinstance(value, str) and len(value) <= MAX_CLASS_NAME and value.isprintable()


def stored_classes(checkpoint: dict, head: str | None = None) -> dict:
    """What a checkpoint says of its (or its head `head`'s) classes: {"class_names", "palette"}, either
    absent. The model record's (dense_model, checked by read_model_config); a checkpoint written before
    it held them: the names train.py stored in hyper_parameters.metrics (of a multi-head checkpoint,
    hyper_parameters.heads.<head>.metrics), when they are a list of short strings, else none."""
    record = checkpoint[MODEL_KEY] if head is None else checkpoint[MODEL_KEY]["heads"][head]
    stored = {k: record[k] for k in CLASS_KEYS if k in record}
    if "class_names" in stored:
        return stored
    hparams = checkpoint.get("hyper_parameters") or {}
    if head is not None:
        entries = hparams.get("heads") if isinstance(hparams, dict) else None
        hparams = entries.get(head) if isinstance(entries, dict) else None
    metrics = hparams.get("metrics") if isinstance(hparams, dict) else None
    names = metrics.get("class_names") if isinstance(metrics, dict) else None
    if isinstance(names, list) and names and all(is_class_name(n) for n in names):
        stored["class_names"] = names
    return stored


def check_model_config(config, where: str) -> None:
    if not isinstance(config, dict) or not config:
        raise WeightsError(
            f"{where}: its '{MODEL_KEY}' entry is {shown(config)}, not the model description train.py writes"
        )
    if "heads" in config:  # a multi-head model: each head's config is checked as a single head's
        check_multi_config(config, where)
        for entry in part_configs(config).values():
            check_model_config(entry, where)
        return
    for key in ("backbone", "head"):
        if not isinstance(config.get(key), str):
            raise WeightsError(f"{where}: its '{MODEL_KEY}' entry has no '{key}' name")
    # A checkpoint names its head and backbone, it never makes us import the module defining them.
    for kind, registry in (("head", heads.HEADS), ("backbone", BACKBONES)):
        if config[kind] not in registry:
            raise WeightsError(
                f"{where} was trained with the {kind} {shown(config[kind])}, which is not registered: pass the "
                f"module that defines it with imports=[module] (known: {', '.join(registry.names())})"
            )
    options = set(heads.get_head_spec(config["head"]).options)
    for key, value in config.items():
        if key not in RECORD_KEYS and key not in options:
            raise WeightsError(
                f"{where}: '{MODEL_KEY}' has the key {shown(key)}, which is no option of the model"
            )
        problem = plain_value_problem(value, f"{MODEL_KEY}.{key}")
        if problem:
            raise WeightsError(f"{where}: {problem}")
        problem = schema.type_problem({key: value}, schema.ModelRecord, f"{MODEL_KEY}.", required=False)
        if problem:  # dense_model.layers='abc' must be a list
            raise WeightsError(f"{where}: {problem}")
    check_classes(config, where)


def check_multi_config(config: dict, where: str) -> None:
    """A multi-head config (dense.multi_head.multi_config) as plain data: the shared backbone keys, and
    `heads` a mapping of valid head names to mappings. Head names are only ever dictionary keys and
    name parts; the registered head each entry names is checked by check_model_config."""
    unknown = sorted(set(config) - {*SHARED_KEYS, "heads"}, key=str)
    if unknown:
        raise WeightsError(
            f"{where}: '{MODEL_KEY}' has the key {shown(unknown[0])}, which is no option of the model"
        )
    entries = config["heads"]
    if not isinstance(entries, dict):
        raise WeightsError(f"{where}: {MODEL_KEY}.heads is {shown(entries)}, not a mapping of head names")
    try:
        check_head_names(list(entries), f"{MODEL_KEY}.heads")
    except ValueError as error:
        raise WeightsError(f"{where}: {error}") from None
    for name, entry in entries.items():
        if not isinstance(entry, dict) or any(k in entry for k in (*SHARED_KEYS, "heads")):
            raise WeightsError(f"{where}: {MODEL_KEY}.heads.{name} is not a head's config")


def trusted_folders(checkpoint_path: str) -> list[str]:
    """Where files named by a checkpoint may be read from: its own folder and, for a checkpoint in the
    `checkpoints/` folder of a train.py run (one whose parent holds the run's `.hydra/` folder), that
    run folder. Real, resolved paths. (The folder name alone is not enough: `~/checkpoints/x.ckpt`
    must not make the whole home folder trusted.)"""
    folder = os.path.dirname(os.path.realpath(checkpoint_path))
    folders = [folder]
    run = os.path.dirname(folder)
    marker = os.path.join(run, ".hydra")
    if os.path.basename(folder) == "checkpoints" and os.path.isdir(marker) and not os.path.islink(marker):
        folders.append(run)
    return folders


def is_inside(path: str, folders: list[str]) -> bool:
    real = os.path.realpath(path)
    return any(os.path.commonpath([real, folder]) == folder for folder in folders)


def locate_backbone_weights(where: str, stored: str | None, given, sha256: str | None) -> str | None:
    """The backbone file to build a checkpoint's model from (None: none, the official weights or a
    random initialisation), checked against the recorded sha256.

    `given` (the caller's backbone_weights) wins. Otherwise the stored path is followed only inside the
    checkpoint's run folder, or its file name is looked for beside the checkpoint (a copied run folder):
    a path read from a file never leads elsewhere."""
    if given is None and not stored:
        return None
    if given is not None:
        path = os.fspath(given)
        if not os.path.isfile(path):
            raise WeightsError(f"backbone weights file not found: {path}")
    else:
        beside = os.path.join(os.path.dirname(where), os.path.basename(stored))
        folders = trusted_folders(where)
        path = next((p for p in (stored, beside) if os.path.isfile(p) and is_inside(p, folders)), None)
        if path is None:
            there = "are not there any more" if not os.path.isfile(stored) else "lie outside its run folder"
            raise WeightsError(
                f"{where} was trained on the backbone weights {shown(stored, 200)}, which {there}: pass their location "
                "(backbone_weights=PATH, config: backbone.weights=PATH)"
            )
    if sha256 is not None:
        actual = file_sha256(path)
        if actual != sha256:
            raise WeightsError(
                f"{path}: the backbone weights changed since {where} was written (sha256 {actual[:16]}…, the "
                f"checkpoint recorded {sha256[:16]}…): its head was trained on other features; use the original file"
            )
    return path


def load_model(path: str | os.PathLike, backbone_weights: str | os.PathLike | None = None) -> DenseModel:
    """Rebuild the exact DenseModel that wrote checkpoint `path` (eval mode); see model_from_checkpoint."""
    return model_from_checkpoint(read_model_config(path)[0], path, backbone_weights)


def model_from_checkpoint(
    checkpoint: dict, path: str | os.PathLike, backbone_weights: str | os.PathLike | None = None
) -> DenseModel:
    """The exact DenseModel that wrote `checkpoint` (as read_model_config returns it, from file `path`),
    in eval mode.

    backbone_weights: where the backbone weights file lies now, when it has moved since training (or
    lies outside the checkpoint's run folder). When the checkpoint recorded the file's sha256, a file
    with other content is refused.

    The stored config is first built on the meta device and compared with the stored tensors, so a
    config whose sizes do not fit them (an absurd n_bins, a wrong layer count) is refused before
    anything of that size is allocated.
    """
    where = os.fspath(path)
    config = build_arguments(checkpoint[MODEL_KEY])
    state = checkpoint["state_dict"]
    stored = any(k.startswith(BACKBONE_PREFIX) for k in state)
    if "heads" in config:
        return multi_from_checkpoint(checkpoint, where, backbone_weights)
    sha256 = config.pop("backbone_sha256", None)
    backbone, head = config.pop("backbone"), config.pop("head")
    pretrained, stored_weights = config.pop("pretrained", False), config.pop("backbone_weights", None)
    with torch.device("meta"):
        skeleton = build_or_refuse(where, backbone, head, config)
    check_stored_tensors(where, skeleton, state, stored)
    if stored:  # a random-initialised backbone: its weights are in the checkpoint
        pretrained, weights = False, None
    else:
        weights = locate_backbone_weights(where, stored_weights, backbone_weights, sha256)
    model = build_or_refuse(
        where, backbone, head, config, pretrained=pretrained and weights is None, backbone_weights=weights
    )
    if stored:
        model.backbone.load_state_dict(
            {k[len(BACKBONE_PREFIX) :]: v for k, v in state.items() if k.startswith(BACKBONE_PREFIX)}
        )
    heads.load_released_head(model.head, checkpoint, prefix=HEAD_PREFIX, name=path)
    if sha256 is not None:
        model.config["backbone_sha256"] = sha256
    return model.eval()


def multi_from_checkpoint(checkpoint: dict, where: str, backbone_weights=None) -> MultiHeadModel:
    """model_from_checkpoint for a multi-head checkpoint: the heads' tensors (`model.heads.<name>.*`)
    are checked against skeletons built on the meta device, then one backbone is built and each head
    assembled on it and loaded."""
    from dense.backbones import build_backbone, get_spec
    from dense.model import assemble, plan_head

    config, state = checkpoint[MODEL_KEY], checkpoint["state_dict"]
    stored = any(k.startswith(BACKBONE_PREFIX) for k in state)
    entries = part_configs(config)
    plans = {}
    for name, entry in entries.items():
        options = {k: v for k, v in build_arguments(entry).items() if k not in (*SHARED_KEYS, "head")}
        try:
            plans[name] = plan_head(get_spec(entry["backbone"]), entry["head"], **options)
        except (ValueError, TypeError, KeyError) as error:
            reason = " ".join(str(error).split()) or type(error).__name__
            raise WeightsError(
                f"{where}: the config of its head {name} cannot be built ({reason[:300]})"
            ) from None
    backbone_spec = get_spec(config["backbone"])
    try:
        with torch.device("meta"):
            skeleton_backbone = build_backbone(backbone_spec.name)
            skeletons = {n: assemble(skeleton_backbone, backbone_spec, p) for n, p in plans.items()}
    except (ValueError, TypeError, KeyError, RuntimeError) as error:
        reason = " ".join(str(error).split()) or type(error).__name__
        raise WeightsError(f"{where}: its model config cannot be built ({reason[:300]})") from None
    for name, skeleton in skeletons.items():
        prefix = f"{MULTI_HEAD_PREFIX}{name}."
        head_state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        heads.check_head_state(skeleton.head, head_state, f"{where} (head {name})")
    check_stored_tensors(where, next(iter(skeletons.values())), {}, stored, state)
    if stored:
        pretrained, weights = False, None
    else:
        pretrained = config.get("pretrained", False)
        weights = locate_backbone_weights(
            where, config.get("backbone_weights"), backbone_weights, config.get("backbone_sha256")
        )
    backbone = build_backbone(backbone_spec.name, pretrained=pretrained and weights is None, weights=weights)
    if stored:
        backbone.load_state_dict(
            {k[len(BACKBONE_PREFIX) :]: v for k, v in state.items() if k.startswith(BACKBONE_PREFIX)}
        )
    parts = {
        name: assemble(backbone, backbone_spec, plan, pretrained=pretrained, backbone_weights=weights)
        for name, plan in plans.items()
    }
    for name, part in parts.items():
        heads.load_released_head(part.head, checkpoint, prefix=f"{MULTI_HEAD_PREFIX}{name}.", name=where)
        if config.get("backbone_sha256") is not None:
            part.config["backbone_sha256"] = config["backbone_sha256"]
    model = MultiHeadModel(parts)
    model.config = {**config, "heads": {n: build_arguments(e) for n, e in config["heads"].items()}}
    if not stored:
        model.config["backbone_weights"] = weights
    return model.eval()


def build_or_refuse(where: str, backbone: str, head: str, options: dict, **weights) -> DenseModel:
    """build_model from a checkpoint's config; a value it refuses becomes one line naming the file."""
    try:
        return build_model(backbone, head, **weights, **options)
    except WeightsError:
        raise
    except (ValueError, TypeError, KeyError, RuntimeError) as error:
        reason = " ".join(str(error).split()) or type(error).__name__
        raise WeightsError(f"{where}: its model config cannot be built ({reason[:300]})") from None


def check_stored_tensors(
    where: str, skeleton: DenseModel, state: dict, backbone_stored: bool, backbone_state: dict | None = None
) -> None:
    """The stored head (and backbone, when stored) tensors have exactly the keys and shapes of the model
    the config describes (`skeleton`, built on the meta device). backbone_state: where the backbone's
    tensors are, when not in `state` (whose head is then not checked: a multi-head checkpoint)."""
    if backbone_state is None:
        head_state = {k[len(HEAD_PREFIX) :]: v for k, v in state.items() if k.startswith(HEAD_PREFIX)}
        heads.check_head_state(skeleton.head, head_state, where)
    else:
        state = backbone_state
    if backbone_stored:
        expected = skeleton.backbone.state_dict()
        found = {k[len(BACKBONE_PREFIX) :]: v for k, v in state.items() if k.startswith(BACKBONE_PREFIX)}
        for key in sorted(set(expected) | set(found)):
            if key not in found:
                what = "is missing"
            elif key not in expected:
                what = "is not a tensor of the backbone"
            else:
                what = tensor_problem(found[key], expected[key], owner=skeleton.config["backbone"])
            if what is not None:
                raise WeightsError(f"{where}: the stored backbone tensor {BACKBONE_PREFIX}{key} {what}")


def atomic_save(obj, path: str | os.PathLike) -> None:
    """torch.save through a temporary file renamed into place (fsync'd first): a crash never leaves
    half a checkpoint under the final name. A write that fails (a full disk, a file size limit) is a
    one-line WriteError, and the temporary file is removed."""
    from dense.core.io import atomic_path

    try:
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                torch.save(obj, f)
                f.flush()
                os.fsync(f.fileno())
    except (OSError, RuntimeError) as error:
        # torch.save reports the file's own OSError as a RuntimeError of its zip writer (the context).
        cause = error if isinstance(error, OSError) else error.__context__
        if not isinstance(cause, OSError):
            raise
        full = cause.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
        fix = "free some space or raise the file size limit (ulimit -f)" if full else "fix that"
        failure = WriteError(
            f"cannot write {os.fspath(path)} ({cause.strerror or cause}): {fix}, then run again"
        )
        failure.errno = cause.errno
        raise failure from None
