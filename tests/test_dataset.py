"""Dataset import and checks on generated datasets with planted problems."""

from __future__ import annotations

import json
import zipfile

import pytest
from datasets import (
    CARD,
    PLANTED,
    TRIGGER,
    as_jsonl,
    as_kohya,
    as_zip,
    expected_findings,
    make_image_folder,
    zip_bomb,
    zip_with_members,
)
from PIL import Image

from devserver_lora.errors import DatasetError
from devserver_lora.train.card import DatasetCard
from devserver_lora.train.dataset.captions import add_trigger, decode_caption, estimate_clip_tokens, has_trigger
from devserver_lora.train.dataset.checks import CheckOptions, count_problems, run_checks
from devserver_lora.train.dataset.importers import open_source
from devserver_lora.train.dataset.manifest import load_manifest
from devserver_lora.train.dataset.normalise import prepare_dataset
from devserver_lora.train.dataset.zipsafe import ZipLimits, safe_extract
from devserver_lora.train.presets import get_preset

ALL = tuple(PLANTED)
OPTS = CheckOptions(family="sd35_large", resolution=128, trigger=TRIGGER, workers=1)


def findings(report):
    return {(p.code, p.file) for p in report.problems}


def test_report_lists_every_planted_problem_and_nothing_else(tmp_path):
    src = make_image_folder(tmp_path / "src", 12, planted=ALL)
    with open_source(src) as s:
        report = run_checks(s, OPTS)
    assert findings(report) == expected_findings(ALL)
    by_code = {p.code: p for p in report.problems}
    for code in ("image_unreadable", "image_truncated", "decompression_bomb", "caption_not_utf8"):
        assert by_code[code].severity == "error", code
    for code in ("image_too_small", "extreme_aspect_ratio", "duplicate_exact", "duplicate_near", "caption_missing",
                 "caption_empty", "caption_too_long", "trigger_missing"):
        assert by_code[code].severity == "warning", code
    for code in ("mode_converted", "exif_rotated", "transparency_flattened"):
        assert by_code[code].severity == "info", code
    assert not report.ok
    assert all(p.hint for p in report.problems if p.severity == "error")
    json.dumps(report.as_dict())


def test_clean_dataset_has_no_findings_and_process_pool_agrees(tmp_path):
    src = make_image_folder(tmp_path / "src", 20, planted=("cmyk", "duplicate_near", "truncated"))
    with open_source(src) as s:
        inline = run_checks(s, OPTS)
        pooled = run_checks(s, CheckOptions(**{**OPTS.__dict__, "workers": 2}))
    assert findings(inline) == findings(pooled) == expected_findings(("cmyk", "duplicate_near", "truncated"))
    clean = make_image_folder(tmp_path / "clean", 6, seed=3)
    with open_source(clean) as s:
        assert run_checks(s, OPTS).problems == []


@pytest.mark.parametrize("n,severity", [(3, "error"), (7, "warning"), (20, None), (31, "warning")])
def test_image_count_against_preset(n, severity):
    problems = count_problems(n, get_preset("fotostudio"))
    assert [p.severity for p in problems] == ([severity] if severity else [])
    assert count_problems(0, None)[0].code == "no_images"


def test_captions_tokens_and_trigger():
    assert decode_caption("\ufeffadire,\r\n  indigo   cloth \n".encode()) == "adire, indigo cloth"
    with pytest.raises(ValueError, match="not UTF-8"):
        decode_caption("gefärbt".encode("latin-1"))
    assert has_trigger("Adire, cloth", "adire") and not has_trigger("adirecloth", "adire")
    assert add_trigger("cloth", "adire") == "adire, cloth" and add_trigger("", "adire") == "adire"
    assert add_trigger("a cloth in adire style", "adire") == "a cloth in adire style"
    # The estimate is conservative: never below one token per word plus start and end.
    short = "a photo of indigo cloth"
    assert estimate_clip_tokens(short) >= len(short.split()) + 2
    assert estimate_clip_tokens("ọ̀ṣọ́ àdìrẹ") > 4  # tone marks cost byte tokens
    assert estimate_clip_tokens(" ".join(["word"] * 75)) == 77
    assert estimate_clip_tokens(" ".join(["word"] * 76)) > 77


# --- import from four sources ------------------------------------------------------------------------


def _tree(folder):
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.name != "checks.json":
            data = p.read_bytes()
            if p.name == "dataset.json":
                m = json.loads(data)
                m.pop("source")
                for img in m["images"]:
                    img.pop("source")
                data = json.dumps(m, sort_keys=True).encode()
            out[str(p.relative_to(folder))] = data
    return out


def test_four_sources_give_byte_identical_datasets(tmp_path):
    planted = ("cmyk", "16bit", "palette_alpha", "exif_rotated", "duplicate_exact", "caption_missing",
               "trigger_missing")
    folder = make_image_folder(tmp_path / "src", 8, planted=planted)
    sources = {
        "folder": folder,
        "jsonl": as_jsonl(folder, tmp_path / "jsonl"),
        "jsonl_file_prompt": as_jsonl(folder, tmp_path / "jsonl2", spelling=("file", "prompt")) / "metadata.jsonl",
        "zip": as_zip(folder, tmp_path / "upload.zip"),
        "kohya": as_kohya(folder, tmp_path / "kohya", repeats=10),
    }
    trees = {}
    for kind, path in sources.items():
        out = tmp_path / "out" / kind / "adire_set"
        result = prepare_dataset(path, out, trigger=TRIGGER, repeats=10, card=DatasetCard(**CARD), workers=1)
        assert result.manifest.num_images == 8 + len(planted) - 1  # the exact duplicate is left out
        trees[kind] = _tree(out)
    first = trees["folder"]
    for kind, tree in trees.items():
        assert tree == first, kind
    manifest = load_manifest(tmp_path / "out" / "zip" / "adire_set")
    assert manifest.source["kind"] == "zip" and manifest.subset_dir == "10_adire"
    for img in manifest.images:
        out = tmp_path / "out" / "zip" / "adire_set" / img.file
        with Image.open(out) as im:
            assert im.mode == "RGB" and im.size == (img.width, img.height) and im.format == "PNG"
        caption = (out.with_suffix(".txt")).read_text(encoding="utf-8").strip()
        assert caption == img.caption and has_trigger(caption, TRIGGER)
    rotated = next(i for i in manifest.images if i.source == "p_exif.jpg")
    assert (rotated.width, rotated.height) == (112, 128)  # turned upright
    names = [i.file for i in manifest.images]
    assert names == sorted(names)


def test_prepare_refuses_errors_and_writes_nothing(tmp_path):
    src = make_image_folder(tmp_path / "src", 10, planted=("truncated", "caption_not_utf8"))
    out = tmp_path / "ds"
    with pytest.raises(DatasetError) as exc:
        prepare_dataset(src, out, trigger=TRIGGER, workers=1)
    assert {p.code for p in exc.value.problems} == {"image_truncated", "caption_not_utf8"}
    assert "--skip-bad" in exc.value.hint
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["src"]
    result = prepare_dataset(src, out, trigger=TRIGGER, skip_bad=True, workers=1)
    assert sorted(result.skipped) == ["p_latin1.jpg", "p_truncated.jpg"]
    assert result.manifest.num_images == 10
    with pytest.raises(DatasetError, match="already exists"):
        prepare_dataset(src, out, trigger=TRIGGER, skip_bad=True, workers=1)
    again = prepare_dataset(src, out, trigger=TRIGGER, skip_bad=True, overwrite=True, workers=1, resize="crop",
                            crop_size=64)
    assert all((i.width, i.height) == (64, 64) for i in again.manifest.images)
    with pytest.raises(DatasetError, match="trigger"):
        prepare_dataset(src, tmp_path / "x", trigger="a, b")
    with pytest.raises(DatasetError, match="does not exist"):
        prepare_dataset(tmp_path / "missing", tmp_path / "y")


def test_metadata_jsonl_with_hostile_names(tmp_path):
    folder = make_image_folder(tmp_path / "src", 3)
    jl = as_jsonl(folder, tmp_path / "jl")
    with open(jl / "metadata.jsonl", "a", encoding="utf-8") as fh:
        fh.write(json.dumps({"file_name": "../src/img_000.jpg", "text": "x"}) + "\n")
        fh.write(json.dumps({"file_name": "/etc/passwd", "text": "x"}) + "\n")
        fh.write("not json\n")
        fh.write(json.dumps({"file_name": "images/missing.jpg", "text": "x"}) + "\n")
    with open_source(jl) as s:
        assert len(s.items) == 3
        codes = sorted(p.code for p in s.problems)
    assert codes == ["image_missing", "metadata_invalid", "metadata_unsafe_path", "metadata_unsafe_path"]


# --- hostile ZIPs ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "members,symlinks,code",
    [
        ({"ok.txt": b"x", "../evil.txt": b"pwned"}, None, "zip_unsafe_path"),
        ({"a/../../evil.txt": b"pwned"}, None, "zip_unsafe_path"),
        ({"/tmp/evil.txt": b"pwned"}, None, "zip_unsafe_path"),
        ({"a\\..\\..\\evil.txt": b"pwned"}, None, "zip_unsafe_path"),
        ({"C:/evil.txt": b"pwned"}, None, "zip_unsafe_path"),
        ({"ok.txt": b"x"}, {"link.png": "/etc/passwd"}, "zip_symlink"),
    ],
)
def test_hostile_zip_members_are_refused(tmp_path, members, symlinks, code):
    archive = zip_with_members(tmp_path / "up.zip", members, symlinks=symlinks)
    target = tmp_path / "deep" / "target"
    target.parent.mkdir()
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    with pytest.raises(DatasetError) as exc:
        safe_extract(archive, target)
    assert exc.value.problems[0].code == code
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing written anywhere
    with pytest.raises(DatasetError):
        prepare_dataset(archive, tmp_path / "ds")
    assert not (tmp_path / "ds").exists()


def test_ten_gigabyte_member_is_refused_cheaply(tmp_path):
    # Honest headers: refused from the declared size before any byte is inflated.
    honest = zip_bomb(tmp_path / "honest.zip")
    assert honest.stat().st_size < 20 << 20
    with pytest.raises(DatasetError) as exc:
        safe_extract(honest, tmp_path / "t1")
    assert exc.value.problems[0].code == "zip_too_large" and not (tmp_path / "t1").exists()
    # Lying headers (10 GiB inside, 100 MB declared): refused, and never more than the declared bytes inflated.
    liar = zip_bomb(tmp_path / "liar.zip", declared=100 << 20)
    with pytest.raises(DatasetError) as exc:
        safe_extract(liar, tmp_path / "t2")
    assert exc.value.problems[0].code in ("zip_bomb", "zip_corrupt") and not (tmp_path / "t2").exists()
    # A member that inflates far more than images do: the streamed byte counter stops it on the ratio.
    dense = zip_bomb(tmp_path / "dense.zip", expanded=1 << 30, declared=400 << 20)
    with pytest.raises(DatasetError) as exc:
        safe_extract(dense, tmp_path / "t3")
    assert exc.value.problems[0].code == "zip_bomb" and "times its compressed size" in exc.value.problems[0].message
    assert not (tmp_path / "t3").exists()
    # Caps from the declared sizes: per member and in total.
    with pytest.raises(DatasetError, match="more than"):
        safe_extract(dense, tmp_path / "t4", limits=ZipLimits(max_member_bytes=300 << 20))
    with pytest.raises(DatasetError, match="in total"):
        safe_extract(dense, tmp_path / "t5", limits=ZipLimits(max_total_bytes=300 << 20))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dense.zip", "honest.zip", "liar.zip"]


def test_zip_junk_and_nested_folder(tmp_path):
    folder = make_image_folder(tmp_path / "src", 4)
    archive = as_zip(folder, tmp_path / "u.zip", inner="my_photos")
    with zipfile.ZipFile(archive, "a") as zf:
        zf.writestr("__MACOSX/my_photos/._img_000.jpg", b"junk")
        zf.writestr("my_photos/.DS_Store", b"junk")
    with open_source(archive) as s:
        assert s.kind == "zip" and [i.source for i in s.items] == [f"img_{i:03d}.jpg" for i in range(4)]


def test_pillow_bomb_limits(tmp_path):
    """Above Pillow's pixel limit: a warning (the image is scaled down); above twice it: an error."""
    from datasets import forged_bomb_png, jpeg_bytes, pattern_image

    folder = tmp_path / "src"
    folder.mkdir()
    (folder / "huge.png").write_bytes(forged_bomb_png(10000, 10000))  # 1e8 px: between 1x and 2x the limit
    (folder / "bomb.png").write_bytes(forged_bomb_png(20000, 20000))
    (folder / "fine.jpg").write_bytes(jpeg_bytes(pattern_image(1, (128, 128))))
    (folder / "fine.txt").write_text("a pattern", encoding="utf-8")
    with open_source(folder) as s:
        report = run_checks(s, CheckOptions(resolution=128, workers=1))
    got = findings(report)
    assert ("very_large_image", "huge.png") in got and ("decompression_bomb", "bomb.png") in got
    # The forged file has no pixel data, so decoding it fails as well; nothing about the good image.
    assert {f for c, f in got} == {"huge.png", "bomb.png"}


def test_metadata_jsonl_findings_name_the_image(tmp_path):
    planted = ("caption_empty", "caption_too_long", "trigger_missing", "caption_missing", "cmyk", "truncated")
    folder = make_image_folder(tmp_path / "src", 6, planted=planted)
    jl = as_jsonl(folder, tmp_path / "jl", spelling=("file", "prompt"))
    with open_source(jl) as s:
        report = run_checks(s, OPTS)
    expected = {(code, f"images/{PLANTED[k][0]}") for k in planted for code in PLANTED[k][1]}
    assert findings(report) == expected


def test_caption_cleaning_is_idempotent():
    from hypothesis import given, settings
    from hypothesis import strategies as st

    @settings(max_examples=200, deadline=None)
    @given(st.text(max_size=80), st.sampled_from(["adire", "ọ̀ṣọ́", "my style"]))
    def check(text, trigger):
        once = decode_caption(text.encode("utf-8"))
        assert decode_caption(once.encode("utf-8")) == once
        assert "\n" not in once
        with_trigger = add_trigger(once, trigger)
        assert add_trigger(with_trigger, trigger) == with_trigger and has_trigger(with_trigger, trigger)
        assert estimate_clip_tokens(with_trigger) >= 2

    check()


def test_zip_extraction_never_writes_outside_its_folder(tmp_path):
    """Property: for any member names, extraction either refuses or writes only inside the target."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    part = st.sampled_from(["..", ".", "", "a", "b.png", "C:", "~", "\\..", "a\\b", "/", "x y"])
    names = st.lists(st.lists(part, min_size=1, max_size=4).map("/".join), min_size=1, max_size=4, unique=True)
    counter = iter(range(10**6))

    @settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(names)
    def check(members):
        case = tmp_path / f"case{next(counter)}"
        (case / "outside").mkdir(parents=True)
        archive = zip_with_members(case / "a.zip", {m: b"data" for m in members})
        target = case / "outside" / "target"
        try:
            written = safe_extract(archive, target)
        except DatasetError:
            assert not target.exists()
        else:
            for name in written:
                assert (target / name).resolve().is_relative_to(target.resolve())
        stray = [p for p in case.rglob("*") if p.is_file() and target not in p.parents and p.name != "a.zip"]
        assert stray == []

    check()
