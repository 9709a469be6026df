"""A faithful stand-in for sd-scripts' `*_train_network.py` at 48d368fa, built from the recorded behaviour.

- argparse built from the recorded flag list (tests/fixtures/kohya/sd3_train_network_flags.tsv): an unknown
  flag ends like the real one, `error: unrecognized arguments: ...` and exit 2; `--config_file` keys are
  flattened and NOT checked, CLI overrides file (read_config_from_file).
- `--dataset_config` validated by a voluptuous schema written from library/config_util.py (DreamBooth + dropout):
  an unknown key raises `voluptuous.error.MultipleInvalid: extra keys not allowed @ data[...]`, exit 1.
- `N_name` folders (or dataset subsets) without images: "No data found" and exit 0, no LoRA.
- output in the recorded format (rich log preamble, tqdm `\\r` redraws on `steps:`, `epoch N/M`,
  `saving checkpoint: <abs path>`, `model saved.`), STANDIN_STEP_S seconds per step;
  STANDIN_REPLAY=<file> replays a recorded log verbatim instead (STANDIN_CHUNK_S between chunks).
- LoRA files with the recorded key layout (lora_keys.txt), attn2 keys only when the checkpoint has attn2,
  text-encoder keys when not `network_train_unet_only`; `--save_state` folders with train_state.json;
  after `--resume` the step counter restarts at 0 while epochs continue (as recorded).
- the start-up assertions of assert_extra_args / MMDiT.enable_block_swap: caption dropout, shuffling, token warm-up
  or tag dropout with cached text-encoder outputs, and more swapped blocks than the checkpoint's depth - 2, end
  with the real assertion text and exit 1 (tests/test_kohya_sd_scripts_facts.py checks every string printed here
  against the pinned source).
- STANDIN_SCHEMA_DROP = keys the dataset schema lacks (an older sd-scripts); STANDIN_FLAGS_DROP = flags argparse lacks.
- samples as `library/sd3_train_utils.sample_images` makes them: `--sample_prompts` (.json list, `enum` = place),
  `--sample_at_first` (epoch 0, step 0), `--sample_every_n_steps` (after the step's bar, before its checkpoint),
  `--sample_every_n_epochs`; the rich-wrapped "generating sample images at step" record first, then
  `<output_dir>/sample/<output_name>_<%06d step | e%06d epoch>_<enum:02d>_<YYYYmmddHHMMSS>_<seed>.png`.
- STANDIN_FAIL = oom | arch | nan | model | kill | hang | bnb_missing | sample, at step STANDIN_FAIL_AT (default
  1; `sample` dies inside the sampler at that sampling step, 0 = the one before training, with a traceback).
Environment: STANDIN_FIXTURES = path of tests/fixtures/kohya (required).
"""

from __future__ import annotations

import argparse
import ast
import csv
import json
import os
import random
import re
import signal
import struct
import sys
import time
import tomllib
from pathlib import Path

FIX = Path(os.environ.get("STANDIN_FIXTURES", ""))
STEP_S = float(os.environ.get("STANDIN_STEP_S", "0.01"))
FAIL = os.environ.get("STANDIN_FAIL", "")
FAIL_AT = int(os.environ.get("STANDIN_FAIL_AT", "1"))
IMAGE_EXT = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}
# sd3_train_network.py SD3NetworkTrainer.assert_extra_args, verbatim.
TE_CACHE_ASSERTION = (
    "when caching Text Encoder output, either caption_dropout_rate, shuffle_caption, token_warmup_step or "
    "caption_tag_dropout_rate cannot be used / Text Encoderの出力をキャッシュするときはcaption_dropout_rate, "
    "shuffle_caption, token_warmup_step, caption_tag_dropout_rateは使えません"
)


def out(text: str, end: str = "\n") -> None:
    sys.stdout.write(text + end)
    sys.stdout.flush()


def int_or_float(v: str):
    f = float(v)
    return int(f) if f.is_integer() and "." not in v else f


def build_parser(script: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=script)
    types = {"int": int, "float": float, "str": str, "Path": Path, "int_or_float": int_or_float}
    with open(FIX / "sd3_train_network_flags.tsv", encoding="utf-8") as fh:
        for row in csv.DictReader(fh, delimiter="\t"):
            if row["action"] == "_HelpAction" or row["dest"] in os.environ.get("STANDIN_FLAGS_DROP", "").split(","):
                continue
            opts = row["option"].split(",")
            kw: dict = {"dest": row["dest"]}
            if row["action"] == "_StoreTrueAction":
                kw["action"] = "store_true"
            else:
                kw["type"] = types.get(row["type"], str)
                if row["nargs"] == "*":
                    kw["nargs"] = "*"
                try:
                    default = ast.literal_eval(row["default"])
                except (ValueError, SyntaxError):
                    default = None
                kw["default"] = default
                try:
                    choices = ast.literal_eval(row["choices"])
                except (ValueError, SyntaxError):
                    choices = None
                if isinstance(choices, list):
                    kw["choices"] = choices
            parser.add_argument(*opts, **kw)
    if script == "flux_train_network.py":  # family flags the SD3 recording does not have
        for name in ("--ae", "--timestep_sampling", "--model_prediction_type"):
            parser.add_argument(name, type=str)
        for name in ("--guidance_scale", "--discrete_flow_shift", "--sigmoid_scale"):
            parser.add_argument(name, type=float)
    return parser


def dataset_validator():
    from voluptuous import Any, ExactSequence, Required, Schema

    def res(v):
        return Schema(Any(int, ExactSequence([int, int])))(v)

    subset = {
        "color_aug": bool, "face_crop_aug_range": ExactSequence([float, float]), "flip_aug": bool,
        "num_repeats": int, "random_crop": bool, "shuffle_caption": bool, "keep_tokens": int,
        "keep_tokens_separator": str, "secondary_separator": str, "caption_separator": str, "enable_wildcard": bool,
        "token_warmup_min": int, "token_warmup_step": Any(float, int), "caption_prefix": str, "caption_suffix": str,
        "custom_attributes": dict, "resize_interpolation": str,
    }
    dropout = {"caption_dropout_every_n_epochs": int, "caption_dropout_rate": Any(float, int),
               "caption_tag_dropout_rate": Any(float, int)}
    db_asc = {"caption_extension": str, "class_tokens": str, "cache_info": bool}
    db_subset = {**subset, Required("image_dir"): str, "is_reg": bool, "alpha_mask": bool, **db_asc, **dropout}
    dataset_asc = {"batch_size": int, "bucket_no_upscale": bool, "bucket_reso_steps": int, "enable_bucket": bool,
                   "max_bucket_reso": int, "min_bucket_reso": int, "validation_seed": int, "validation_split": float,
                   "resolution": res, "network_multiplier": float, "resize_interpolation": str}
    # STANDIN_SCHEMA_DROP=key1,key2 plays an older sd-scripts whose schema lacks those keys.
    for key in filter(None, os.environ.get("STANDIN_SCHEMA_DROP", "").split(",")):
        for table in (subset, dropout, db_asc, dataset_asc):
            table.pop(key, None)
    db_subset = {k: v for k, v in db_subset.items() if k not in os.environ.get("STANDIN_SCHEMA_DROP", "").split(",")}
    dataset = {**dataset_asc, **subset, **db_asc, **dropout, "subsets": [db_subset]}
    general = {**dataset_asc, **subset, **db_asc, **dropout}
    return Schema({"general": general, "datasets": [dataset]})


def load_args(script: str, argv: list[str]) -> argparse.Namespace:
    parser = build_parser(script)
    pre = parser.parse_args(argv)  # exits 2 on an unknown flag, like the real script
    ns = argparse.Namespace()
    if pre.config_file:
        out(f"Loading settings from {pre.config_file}...")
        with open(pre.config_file, "rb") as fh:
            doc = tomllib.load(fh)
        for key, value in doc.items():  # sections are flattened; keys are not checked
            if isinstance(value, dict):
                for k, v in value.items():
                    setattr(ns, k, v)
            else:
                setattr(ns, key, value)
    return parser.parse_args(argv, namespace=ns)


def header_keys(path: str) -> list[str]:
    with open(path, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        return [k for k in json.loads(fh.read(n)) if k != "__metadata__"]


def recorded_layout(te: bool) -> tuple[list[tuple[str, tuple]], dict[str, str]]:
    lines = (FIX / "lora_keys.txt").read_text(encoding="utf-8").splitlines()
    start = 0
    if te:
        start = next(i for i, line in enumerate(lines) if line.startswith("# file: out_te/"))
    keys, meta, in_meta = [], {}, False
    for line in lines[start + 1:]:
        if line.startswith("# file:") or line.startswith("# ----") or line.startswith("#####"):
            break
        if line.startswith("# metadata"):
            in_meta = True
            continue
        if not line or line.startswith("#"):
            continue
        if in_meta:
            k, _, v = line.partition(" = ")
            meta[k] = v
        else:
            name, shape, _dtype = line.split("\t")
            keys.append((name, ast.literal_eval(shape)))
    return keys, meta


def write_lora(path: Path, args: argparse.Namespace, *, attn2: bool, epoch: int, step: int) -> None:
    te = not getattr(args, "network_train_unet_only", False)
    keys, meta = recorded_layout(te)
    dim = int(getattr(args, "network_dim", None) or 4)
    header, blobs, offset = {}, [], 0
    rnd = random.Random(step)
    for name, shape in keys:
        if not attn2 and "_attn2_" in name:
            continue
        shape = tuple(dim if s == 4 else s for s in shape)
        count = 1
        for s in shape:
            count *= s
        if name.endswith(".alpha"):
            raw = struct.pack("<f", float(getattr(args, "network_alpha", 1.0)))[2:]  # bf16 = upper half of f32
        else:
            raw = b"".join(struct.pack("<f", rnd.uniform(-0.01, 0.01))[2:] for _ in range(min(count, 64)))
            raw += bytes(2 * count - len(raw))
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    meta.update({"ss_output_name": args.output_name, "ss_epoch": str(epoch), "ss_steps": str(step),
                 "ss_network_dim": str(dim), "modelspec.title": args.output_name,
                 "modelspec.architecture": "stable-diffusion-3-5-medium/lora" if attn2 else
                 "stable-diffusion-3-5-large/lora"})
    doc = {"__metadata__": meta, **header}
    raw_header = json.dumps(doc).encode()
    raw_header += b" " * (-len(raw_header) % 8)
    tmp = path.with_suffix(".partial")
    with open(tmp, "wb") as fh:
        fh.write(struct.pack("<Q", len(raw_header)) + raw_header)
        for blob in blobs:
            fh.write(blob)
    os.replace(tmp, path)


def save_state(out_dir: Path, name: str, epoch: int, step: int) -> None:
    state = out_dir / name
    state.mkdir(parents=True, exist_ok=True)
    (state / "train_state.json").write_text(json.dumps({"current_epoch": epoch, "current_step": step}))
    (state / "model.safetensors").write_bytes(b"")
    (state / "random_states_0.pkl").write_bytes(b"")  # accelerate's save_state writes the RNG states last


def bar(step: int, total: int, loss: float | None, rate: float) -> str:
    pct = int(100 * step / total) if total else 0
    filled = "█" * (pct // 10)
    text = f"steps: {pct:3d}%|{filled:<10}| {step}/{total} [00:00<00:00, {rate:.2f}it/s"
    if loss is not None:
        text += f", avr_loss={'nan' if loss != loss else f'{loss:.3g}'}"
    return text + "]"


def fail(kind: str) -> int:
    if kind == "oom":
        out("Traceback (most recent call last):\n  File \"sd3_train_network.py\", line 1, in <module>")
        out("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity "
            "of 31.36 GiB of which 1.02 GiB is free.")
        return 1
    if kind == "arch":
        out("Traceback (most recent call last):")
        out("RuntimeError: CUDA error: no kernel image is available for execution on the device")
        return 1
    if kind == "model":
        out("Traceback (most recent call last):")
        out("RuntimeError: Error(s) in loading state_dict for MMDiT:\n\tsize mismatch for "
            "joint_blocks.0.x_block.attn.qkv.weight: copying a param with shape torch.Size([4608, 1536])")
        return 1
    if kind == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if kind == "hang":
        for _ in range(6000):
            time.sleep(0.1)
    return 1


def sample_images(args: argparse.Namespace, epoch: int | None, steps: int) -> None:
    """The decision and the files of sd3_train_utils.sample_images / sample_image_inference (the pinned source)."""
    if steps == 0:
        if not args.sample_at_first:
            return
    else:
        if args.sample_every_n_steps is None and args.sample_every_n_epochs is None:
            return
        if args.sample_every_n_epochs is not None:
            if epoch is None or epoch % args.sample_every_n_epochs != 0:
                return
        elif steps % args.sample_every_n_steps != 0 or epoch is not None:
            return
    # rich's console record, wrapped at 80 columns with the source location at the right, as sd-scripts logs it
    out("                    INFO                                  sd3_train_utils.py:399")
    out("                    INFO     generating sample images at  sd3_train_utils.py:400")
    out("                             step / サンプル画像生成                            ")
    out(f"                             ステップ: {steps}".ljust(80))
    if FAIL == "sample" and steps == FAIL_AT:
        out("Traceback (most recent call last):")
        out('  File "/srv/sdscripts/library/sd3_train_utils.py", line 548, in sample_image_inference')
        out("RuntimeError: shape '[1, 16, 7, 7]' is invalid for input of size 1024")
        sys.exit(1)
    from PIL import Image

    with open(args.sample_prompts, encoding="utf-8") as fh:
        prompts = json.load(fh)  # train_util.load_prompts reads a .json file as a list of dicts
    save_dir = Path(args.output_dir) / "sample"
    save_dir.mkdir(parents=True, exist_ok=True)
    for i, prompt in enumerate(prompts):
        seed = prompt.get("seed")
        width = max(64, prompt.get("width", 512) - prompt.get("width", 512) % 8)
        height = max(64, prompt.get("height", 512) - prompt.get("height", 512) % 8)
        out(f"                    INFO     prompt: {prompt.get('prompt', '')}")
        rnd = random.Random(seed if seed is not None else time.time())
        colour = tuple(rnd.randrange(256) for _ in range(3))
        image = Image.new("RGB", (width, height), tuple((c + 9 * steps) % 256 for c in colour))
        num_suffix = f"e{epoch:06d}" if epoch is not None else f"{steps:06d}"
        seed_suffix = "" if seed is None else f"_{seed}"
        ts_str = time.strftime("%Y%m%d%H%M%S", time.localtime())
        name = f"{'' if args.output_name is None else args.output_name + '_'}{num_suffix}_{i:02d}_{ts_str}{seed_suffix}.png"
        image.save(save_dir / name)


def replay(path: str) -> int:
    chunk_s = float(os.environ.get("STANDIN_CHUNK_S", "0"))
    data = Path(path).read_bytes()
    marker = b"---- begin raw output ----\n"
    if marker in data:
        data = data.split(marker, 1)[1]
    for i in range(0, len(data), 4096):
        sys.stdout.buffer.write(data[i:i + 4096])
        sys.stdout.flush()
        if chunk_s:
            time.sleep(chunk_s)
    return 0


def main(script: str) -> int:
    if os.environ.get("STANDIN_REPLAY"):
        return replay(os.environ["STANDIN_REPLAY"])
    args = load_args(script, sys.argv[1:])
    record = os.environ.get("STANDIN_RECORD")
    if record:  # the tests read back exactly what the trainer saw
        Path(record).write_text(json.dumps({"argv": sys.argv[1:], "args": {k: str(v) for k, v in vars(args).items()},
                                            "env_offline": os.environ.get("HF_HUB_OFFLINE")}))
    preamble = (FIX / "run_log_simple_dirs.txt").read_text(encoding="utf-8").split("---- begin raw output ----\n")[1]
    for line in preamble.splitlines()[:6]:
        out(line)
    subsets = []
    te_cache_refused = False
    if args.dataset_config:
        out(f"Loading dataset config from {args.dataset_config}")
        with open(args.dataset_config, "rb") as fh:
            doc = tomllib.load(fh)
        try:
            dataset_validator()(doc)
        except Exception as exc:  # the real script dies with this traceback
            out("ERROR    Invalid user config / ユーザ設定の形式が正しくないようです")
            out("Traceback (most recent call last):")
            out(f"voluptuous.error.{type(exc).__name__}: {exc}")
            return 1
        general = doc.get("general", {})
        for ds in doc.get("datasets", []):
            for sub in ds.get("subsets", []):
                subsets.append((Path(sub["image_dir"]), int(sub.get("num_repeats", 1)), int(ds.get("batch_size", 1))))
                # DatasetGroup.is_text_encoder_output_cacheable (library/train_util.py), per subset
                merged = {**general, **ds, **sub}
                uncacheable = (merged.get("caption_dropout_rate", 0) > 0 or merged.get("shuffle_caption", False)
                               or merged.get("token_warmup_step", 0) > 0 or merged.get("caption_tag_dropout_rate", 0) > 0)
                te_cache_refused = te_cache_refused or (uncacheable and (
                    getattr(args, "cache_text_encoder_outputs", False)
                    or getattr(args, "cache_text_encoder_outputs_to_disk", False)))
    elif args.train_data_dir:
        for child in sorted(Path(args.train_data_dir).iterdir()):
            m = re.match(r"^(\d+)_", child.name)
            if m and child.is_dir():
                subsets.append((child, int(m.group(1)), args.train_batch_size))
    images = 0
    for image_dir, repeats, _batch in subsets:
        n = sum(1 for f in image_dir.iterdir() if f.suffix.lower() in IMAGE_EXT) if image_dir.is_dir() else 0
        out(f"found directory {image_dir} contains {n} image files")
        images += n * repeats
    if images == 0:
        out("No data found. Please verify arguments (train_data_dir must be the parent of folders with images) / "
            "画像がありません。引数指定を確認してください（train_data_dirには画像があるフォルダではなく、画像がある"
            "フォルダの親フォルダを指定する必要があります）")
        return 0
    if te_cache_refused:  # assert_extra_args runs after the dataset is loaded
        out("Traceback (most recent call last):")
        out("AssertionError: " + TE_CACHE_ASSERTION)
        return 1
    for key in ("pretrained_model_name_or_path", "clip_l", "clip_g", "t5xxl"):
        value = getattr(args, key, None)
        if value and not Path(value).is_file():
            out("Traceback (most recent call last):")
            out(f"FileNotFoundError: [Errno 2] No such file or directory: '{value}'")
            return 1
    keys = header_keys(args.pretrained_model_name_or_path)
    attn2 = any(".attn2." in k for k in keys)
    depth = 1 + max((int(m.group(1)) for k in keys for m in [re.search(r"joint_blocks\.(\d+)\.", k)] if m), default=-1)
    swap = getattr(args, "blocks_to_swap", None) or 0
    if swap and swap > depth - 2:  # library/sd3_models.py MMDiT.enable_block_swap
        out("Traceback (most recent call last):")
        out(f"AssertionError: Cannot swap more than {depth - 2} blocks. Requested: {swap} blocks.")
        return 1
    if FAIL in ("model", "arch"):
        return fail(FAIL)
    if "8bit" in str(args.optimizer_type).lower() and FAIL == "bnb_missing":
        out("Traceback (most recent call last):")
        out("ModuleNotFoundError: No module named 'bitsandbytes'")
        return 1
    batch = subsets[0][2] or 1
    per_epoch = max(1, -(-images // batch) // max(1, args.gradient_accumulation_steps))
    epochs = args.max_train_epochs or -(-args.max_train_steps // per_epoch)
    total = per_epoch * epochs if args.max_train_epochs else args.max_train_steps
    out(f"  num epochs / epoch数: {epochs}")
    out(f"  total optimization steps / 学習ステップ数: {total}")
    # Where training starts, as train_network.py computes it at 48d368fa (lines 1231-1273 and 1340-1344).
    steps_from_state = None
    if args.resume:
        state = json.loads((Path(args.resume) / "train_state.json").read_text())
        out(f"resume training from local state: {args.resume}")
        out(f"load train state from {args.resume}/train_state.json: {{'current_epoch': {state['current_epoch']}, "
            f"'current_step': {state['current_step']}}}")
        steps_from_state = state["current_step"]
    initial_step = 0
    if args.initial_epoch is not None or args.initial_step is not None:
        if steps_from_state is not None:
            out("WARNING  steps from the state is ignored because initial_step is specified")
        if args.initial_step is not None:
            initial_step = args.initial_step
        else:
            initial_step = (args.initial_epoch - 1) * per_epoch
    elif steps_from_state is not None:
        initial_step = steps_from_state
    if initial_step > 0 and not total > initial_step:
        out("Traceback (most recent call last):")
        out("AssertionError: max_train_steps should be greater than initial step / max_train_stepsは初期ステップより"
            f"大きい必要があります: {total} vs {initial_step}")  # train_network.py NetworkTrainer.train, verbatim
        return 1
    start_epoch = initial_step // per_epoch
    skip = 0
    if initial_step > 0 and args.skip_until_initial_step:
        skip = initial_step - start_epoch * per_epoch  # real: global_step = what is left after whole epochs
    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = args.output_name
    out("", end="\n")
    sample_images(args, 0, 0)  # --sample_at_first
    out(bar(0, total, None, 0.0).replace("00:00<00:00, 0.00it/s", "00:00<?, ?it/s"), end="\r")
    global_step = base = skip  # restarts after --resume, as recorded; the bar counts this attempt's steps from 0
    loss = 2.3
    shown: float | None = None  # the bar's postfix: none until this attempt's first step has its loss
    for epoch in range(start_epoch + 1, epochs + 1):
        out(f"\nepoch {epoch}/{epochs}\n")
        for _ in range(per_epoch - skip):
            if global_step >= total:
                break
            time.sleep(STEP_S)
            global_step += 1
            if FAIL in ("oom", "kill", "hang") and global_step >= FAIL_AT:
                return fail(FAIL)
            loss = float("nan") if FAIL == "nan" and global_step >= FAIL_AT else 2.3 + 0.05 * ((global_step * 7) % 5)
            # train_network.py: progress_bar.update(1) draws the step with the previous postfix, then samples and
            # step checkpoints, then set_postfix draws it again with this step's avr_loss (tqdm draws both when
            # the step took longer than its mininterval, as every real GPU step does).
            rate = 1.0 / max(STEP_S, 1e-3)
            out(bar(global_step - base, total - base, shown, rate), end="\r")
            sample_images(args, None, global_step)
            if args.save_every_n_steps and global_step % args.save_every_n_steps == 0 and global_step < total:
                path = out_dir / f"{name}-step{global_step:08d}.safetensors"
                out(f"\nsaving checkpoint: {path}")
                write_lora(path, args, attn2=attn2, epoch=epoch, step=global_step)
                if args.save_state:
                    save_state(out_dir, f"{name}-step{global_step:08d}-state", epoch, global_step)
            shown = loss
            out(bar(global_step - base, total - base, shown, rate), end="\r")
        skip = 0
        if global_step >= total:
            break
        if args.save_every_n_epochs and epoch % args.save_every_n_epochs == 0 and epoch < epochs:
            path = out_dir / f"{name}-{epoch:06d}.safetensors"
            out(f"\nsaving checkpoint: {path}")
            write_lora(path, args, attn2=attn2, epoch=epoch, step=global_step)
            if args.save_state:
                out(f"saving state at epoch {epoch}")
                save_state(out_dir, f"{name}-{epoch:06d}-state", epoch, global_step)
        sample_images(args, epoch, global_step)
    if args.save_state:
        out("saving last state.")
        save_state(out_dir, f"{name}-state", epochs, global_step)
    path = out_dir / f"{name}.safetensors"
    out(f"\nsaving checkpoint: {path}")
    write_lora(path, args, attn2=attn2, epoch=epochs, step=global_step)
    out("model saved.")
    out(bar(global_step - base, total - base, loss, 100.0))
    return 0
