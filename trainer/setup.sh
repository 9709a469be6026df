#!/usr/bin/env bash
# Set up the Kohya trainer once on the GPU machine. Creates:
#   DIR/sd-scripts/   kohya-ss/sd-scripts at the pinned commit (a git checkout, or a copy of --source)
#   DIR/venv/         its own Python venv: torch for your CUDA + the pinned checkout's OWN requirements.txt
#   DIR/tokenizers/   CLIP-L, CLIP-G and T5 tokenizers saved for offline use (--tokenizer_cache_dir)
#   DIR/sd-scripts.source.json  where sd-scripts came from (git URL + commit, or the --source tree + file check)
# Needs GitHub (unless --source), PyPI, the torch index (download.pytorch.org unless --torch-index pypi) and the
# Hugging Face hub for the tokenizers (unless --skip-tokenizers).
# Then: export KOHYA_DIR=DIR and, in the devserver-lora clone, run `.venv/bin/python -m devserver_lora.train check`.
#
# Usage: trainer/setup.sh [--dir DIR] [--cuda cu128|cu126|cu124|cu121|cpu] [--python PY] [--commit SHA]
#                         [--repo URL | --source TREE] [--torch VER --torchvision VER] [--torch-index URL|pypi]
#                         [--tokenizers-only] [--skip-tokenizers] [--dry-run] [--help]
# --cuda defaults to cu128, the first CUDA whose torch builds carry kernels for RTX 50xx cards (sm_120).
# --source TREE: copy sd-scripts from a local plain source tree (no .git needed; for machines without GitHub). The
#   copy is checked file by file against trainer/sd-scripts.sha256 (the pinned commit's files) and refused if any
#   listed file differs or is missing; with --commit other than the pin there is no list to check against.
# --torch-index pypi: take torch/torchvision from pip's configured index (PyPI or a mirror) instead.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PINNED_COMMIT="48d368fa557731ad0488c07304dfeba8c07910eb"
# sha256 of every file of sd-scripts at the pin (sha256sum format, paths relative to the tree's root).
PINNED_FILES="$HERE/sd-scripts.sha256"

DIR="${KOHYA_DIR:-$HOME/kohya}"
CUDA="cu128"
PYTHON="python3"
COMMIT="$PINNED_COMMIT"
REPO="https://github.com/kohya-ss/sd-scripts.git"
SOURCE=""
TORCH=""
TORCHVISION=""
TORCH_INDEX=""
TOKENIZERS_ONLY=0
SKIP_TOKENIZERS=0
DRY_RUN=0

usage() {
    sed -n '2,21p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

die() {
    echo "setup.sh: $1" >&2
    [ "${2:-}" = "usage" ] && echo "run 'trainer/setup.sh --help' for the options" >&2
    exit 2
}

need_value() {
    if [ $# -lt 2 ] || [ -z "$2" ]; then
        die "$1 needs a value" usage
    fi
}

while [ $# -gt 0 ]; do
    case "$1" in
        --dir) need_value "$@"; DIR="$2"; shift 2 ;;
        --cuda) need_value "$@"; CUDA="$2"; shift 2 ;;
        --python) need_value "$@"; PYTHON="$2"; shift 2 ;;
        --commit) need_value "$@"; COMMIT="$2"; shift 2 ;;
        --repo) need_value "$@"; REPO="$2"; shift 2 ;;
        --source) need_value "$@"; SOURCE="$2"; shift 2 ;;
        --torch) need_value "$@"; TORCH="$2"; shift 2 ;;
        --torchvision) need_value "$@"; TORCHVISION="$2"; shift 2 ;;
        --torch-index) need_value "$@"; TORCH_INDEX="$2"; shift 2 ;;
        --tokenizers-only) TOKENIZERS_ONLY=1; shift ;;
        --skip-tokenizers) SKIP_TOKENIZERS=1; shift ;;
        --dry-run) DRY_RUN=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown option '$1'" usage ;;
    esac
done

# torch builds per CUDA flavour (download.pytorch.org/whl/<flavour>); override with --torch/--torchvision.
case "$CUDA" in
    cu128|cu126) default_torch="2.7.1"; default_vision="0.22.1" ;;
    cu124) default_torch="2.6.0"; default_vision="0.21.0" ;;
    cu121) default_torch="2.5.1"; default_vision="0.20.1" ;;
    cpu) default_torch="2.7.1"; default_vision="0.22.1" ;;
    *) die "unknown --cuda '$CUDA' (use cu128 for RTX 50xx, cu126, cu124, cu121 or cpu)" usage ;;
esac
TORCH="${TORCH:-$default_torch}"
TORCHVISION="${TORCHVISION:-$default_vision}"
case "$TORCH_INDEX" in
    "") torch_index_args=(--index-url "https://download.pytorch.org/whl/$CUDA") ;;
    pypi) torch_index_args=() ;;
    https://*|http://*|file://*) torch_index_args=(--index-url "$TORCH_INDEX") ;;
    *) die "--torch-index must be a URL or 'pypi'" usage ;;
esac

case "$COMMIT" in
    *[!0-9a-f]*|"") die "--commit must be a full 40-character hex commit id" ;;
esac
[ "${#COMMIT}" -eq 40 ] || die "--commit must be a full 40-character hex commit id"
if [ "$COMMIT" != "$PINNED_COMMIT" ]; then
    echo "note: sd-scripts $COMMIT is not the pin $PINNED_COMMIT; devserver-lora checked its flags against the pin" >&2
fi
if [ -n "$SOURCE" ]; then
    if [ ! -f "$SOURCE/sd3_train_network.py" ] || [ ! -f "$SOURCE/requirements.txt" ]; then
        die "--source $SOURCE is not an sd-scripts source tree (no sd3_train_network.py and requirements.txt)"
    fi
    SOURCE="$(cd "$SOURCE" && pwd)"
fi

# Every command goes through run(): printed (shell-quoted) in --dry-run, executed as an argument list otherwise.
run() {
    if [ "$DRY_RUN" -eq 1 ]; then
        printf '+'
        printf ' %q' "$@"
        printf '\n'
    else
        "$@"
    fi
}

# run_in DIR CMD...: CMD with DIR as its working directory (sd-scripts' requirements.txt ends with `-e .`).
run_in() {
    local where="$1"
    shift
    if [ "$DRY_RUN" -eq 1 ]; then
        printf '+ cd %q &&' "$where"
        printf ' %q' "$@"
        printf '\n'
    else
        (cd "$where" && "$@")
    fi
}

SCRIPTS="$DIR/sd-scripts"
VENV="$DIR/venv"
VPY="$VENV/bin/python"
RECORD="$DIR/sd-scripts.source.json"

save_tokenizers() {
    # Same folder names sd-scripts' strategies look for: the hub id with '/' replaced by '_'.
    run "$VPY" -c '
import sys
from pathlib import Path
from transformers import CLIPTokenizer, T5TokenizerFast
cache = Path(sys.argv[1])
for hub_id, cls in (("openai/clip-vit-large-patch14", CLIPTokenizer),
                    ("laion/CLIP-ViT-bigG-14-laion2B-39B-b160k", CLIPTokenizer),
                    ("google/t5-v1_1-xxl", T5TokenizerFast)):
    target = cache / hub_id.replace("/", "_")
    cls.from_pretrained(hub_id).save_pretrained(target)
    print("saved", hub_id, "->", target)
' "$DIR/tokenizers"
}

# write_record KIND ORIGIN CHECKED: DIR/sd-scripts.source.json, what `check` reports about where sd-scripts came from.
write_record() {
    run "$PYTHON" -c '
import json, os, sys, time
record, kind, origin, commit, checked = sys.argv[1:6]
doc = {"kind": kind, "origin": origin, "commit": commit, "checked": checked,
       "installed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
tmp = record + ".partial"
with open(tmp, "w", encoding="utf-8") as fh:
    json.dump(doc, fh, indent=2)
os.replace(tmp, record)
' "$RECORD" "$1" "$2" "$COMMIT" "$3"
}

if [ "$TOKENIZERS_ONLY" -eq 1 ]; then
    save_tokenizers
    exit 0
fi

run mkdir -p "$DIR"
if [ -n "$SOURCE" ]; then
    # A copy, never the tree itself: `pip install -e .` writes into the tree it installs.
    checked="not checked: no file list for commit $COMMIT (trainer/sd-scripts.sha256 lists the pin's files)"
    if [ "$COMMIT" = "$PINNED_COMMIT" ]; then
        if ! run_in "$SOURCE" sha256sum --check --quiet --strict "$PINNED_FILES"; then
            echo "setup.sh: $SOURCE differs from sd-scripts $PINNED_COMMIT (the files above); nothing was installed" >&2
            exit 1
        fi
        checked="every file in trainer/sd-scripts.sha256 matches the pin $PINNED_COMMIT"
    fi
    if [ -e "$SCRIPTS" ]; then
        if [ ! -f "$RECORD" ] || [ -d "$SCRIPTS/.git" ]; then
            die "$SCRIPTS exists and is not a copy setup.sh made from --source; remove it or use another --dir"
        fi
        run rm -rf "$SCRIPTS"
    fi
    run cp -R "$SOURCE" "$SCRIPTS"
    write_record source "$SOURCE" "$checked"
else
    if [ ! -d "$SCRIPTS/.git" ]; then
        run git clone "$REPO" "$SCRIPTS"
    fi
    run git -C "$SCRIPTS" fetch --quiet origin
    run git -C "$SCRIPTS" checkout --quiet --detach "$COMMIT"
    if [ "$DRY_RUN" -eq 0 ]; then
        head="$(git -C "$SCRIPTS" rev-parse HEAD)"
        [ "$head" = "$COMMIT" ] || { echo "setup.sh: checkout is at $head, not $COMMIT" >&2; exit 1; }
    fi
    write_record git "$REPO" "git checkout at $COMMIT"
fi

if [ ! -x "$VPY" ]; then
    run "$PYTHON" -m venv "$VENV"
fi
run "$VPY" -m pip install --upgrade pip
run "$VPY" -m pip install "torch==$TORCH" "torchvision==$TORCHVISION" "${torch_index_args[@]}"
# The pinned checkout's own requirements.txt (it ends with `-e .`, which installs the checkout itself).
run_in "$SCRIPTS" "$VPY" -m pip install -r requirements.txt
run "$VPY" -c 'import torch, torchvision.transforms; print("torch", torch.__version__, "archs", torch.cuda.get_arch_list())'

if [ "$SKIP_TOKENIZERS" -eq 0 ]; then
    save_tokenizers
fi

echo "done. Now: export KOHYA_DIR=$DIR; then, in the devserver-lora clone: .venv/bin/python -m devserver_lora.train check"
