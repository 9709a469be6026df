#!/usr/bin/env bash
# Set up the Kohya trainer once on the GPU machine (needs internet access: GitHub, PyPI, download.pytorch.org,
# and the Hugging Face hub for the tokenizers). Creates:
#   DIR/sd-scripts/   kohya-ss/sd-scripts checked out at the pinned commit
#   DIR/venv/         its own Python venv: torch for your CUDA + the pin's requirements
#   DIR/tokenizers/   CLIP-L, CLIP-G and T5 tokenizers saved for offline use (--tokenizer_cache_dir)
# Then: export KOHYA_DIR=DIR and, in the devserver-lora clone, run `.venv/bin/python -m devserver_lora.train check`.
#
# Usage: trainer/setup.sh [--dir DIR] [--cuda cu128|cu126|cu124|cu121|cpu] [--python PY] [--commit SHA]
#                         [--repo URL] [--torch VER --torchvision VER] [--tokenizers-only] [--skip-tokenizers]
#                         [--dry-run] [--help]
# --cuda defaults to cu128, the first CUDA whose torch builds carry kernels for RTX 50xx cards (sm_120).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PINNED_COMMIT="48d368fa557731ad0488c07304dfeba8c07910eb"

DIR="${KOHYA_DIR:-$HOME/kohya}"
CUDA="cu128"
PYTHON="python3"
COMMIT="$PINNED_COMMIT"
REPO="https://github.com/kohya-ss/sd-scripts.git"
TORCH=""
TORCHVISION=""
TOKENIZERS_ONLY=0
SKIP_TOKENIZERS=0
DRY_RUN=0

usage() {
    sed -n '2,13p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
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
        --torch) need_value "$@"; TORCH="$2"; shift 2 ;;
        --torchvision) need_value "$@"; TORCHVISION="$2"; shift 2 ;;
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

case "$COMMIT" in
    *[!0-9a-f]*|"") die "--commit must be a full 40-character hex commit id" ;;
esac
[ "${#COMMIT}" -eq 40 ] || die "--commit must be a full 40-character hex commit id"
if [ "$COMMIT" != "$PINNED_COMMIT" ]; then
    echo "note: sd-scripts $COMMIT is not the pin $PINNED_COMMIT; devserver-lora checked its flags against the pin" >&2
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

SCRIPTS="$DIR/sd-scripts"
VENV="$DIR/venv"
VPY="$VENV/bin/python"

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

if [ "$TOKENIZERS_ONLY" -eq 1 ]; then
    save_tokenizers
    exit 0
fi

run mkdir -p "$DIR"
if [ ! -d "$SCRIPTS/.git" ]; then
    run git clone "$REPO" "$SCRIPTS"
fi
run git -C "$SCRIPTS" fetch --quiet origin
run git -C "$SCRIPTS" checkout --quiet --detach "$COMMIT"
if [ "$DRY_RUN" -eq 0 ]; then
    head="$(git -C "$SCRIPTS" rev-parse HEAD)"
    [ "$head" = "$COMMIT" ] || { echo "setup.sh: checkout is at $head, not $COMMIT" >&2; exit 1; }
fi

if [ ! -x "$VPY" ]; then
    run "$PYTHON" -m venv "$VENV"
fi
run "$VPY" -m pip install --upgrade pip
run "$VPY" -m pip install "torch==$TORCH" "torchvision==$TORCHVISION" \
    --index-url "https://download.pytorch.org/whl/$CUDA"
# The pin's requirements (trainer/requirements.txt), then the checkout itself (what `-e .` does in theirs).
run "$VPY" -m pip install -r "$HERE/requirements.txt"
run "$VPY" -m pip install --no-deps -e "$SCRIPTS"
if [ "$CUDA" = "cu128" ]; then
    # bitsandbytes 0.44 (the pin's) predates Blackwell; 8-bit optimizers on sm_120 need a newer build.
    run "$VPY" -m pip install "bitsandbytes>=0.45.3"
fi
run "$VPY" -c 'import torch; print("torch", torch.__version__, "archs", torch.cuda.get_arch_list())'

if [ "$SKIP_TOKENIZERS" -eq 0 ]; then
    save_tokenizers
fi

echo "done. Now: export KOHYA_DIR=$DIR; then, in the devserver-lora clone: .venv/bin/python -m devserver_lora.train check"
