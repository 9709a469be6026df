"""The Studio's REST API through Flask's test client: every route, and each refusal answering in the one error shape
without writing anything (the data folder is compared byte for byte before and after)."""

from __future__ import annotations

import io
import json
import shlex
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("flask", reason="the Studio needs the [studio] extra (flask, waitress)")

from studio_api_support import BAD_IMAGE, CARD, make_studio, plan_body, planted_zip, snapshot, upload, user  # noqa: E402

from devserver_lora.train.cli import main as train_main  # noqa: E402


@pytest.fixture()
def studio(tmp_path: Path) -> Any:
    app, client, st = make_studio(tmp_path / "home", teachers=["teacher"])
    return client, st, tmp_path


@pytest.fixture()
def with_dataset(studio: Any) -> Any:
    client, st, tmp = studio
    r = upload(client, "alice", "squares", [(planted_zip(tmp / "src"), "squares.zip")])
    assert r.status_code == 201, r.json
    return client, st, tmp


def _error(r: Any, status: int) -> dict[str, Any]:
    assert r.status_code == status, (r.status_code, r.data[:500])
    body = r.json["error"]
    assert body["message"] and isinstance(body["fields"], list) and "hint" in body
    return body


def _fields(r: Any) -> set[str]:
    return {f["field"] for f in _error(r, 400)["fields"]}


def test_me_presets_and_gpus(studio: Any) -> None:
    client, _st, _ = studio
    assert client.get("/api/lora/me").json == {"user": None, "teacher": False, "mounted": False}
    assert client.get("/api/lora/me", headers=user("teacher")).json["teacher"] is True
    body = client.get("/api/lora/presets").json
    ids = [p["id"] for p in body["presets"]]
    assert {"fotostudio", "atelier", "galerie"} <= set(ids)
    foto = body["presets"][ids.index("fotostudio")]
    assert foto["ranges"]["network_dim"] == [4, 64] and foto["ranges"]["resolution"] == [256, 1536]
    assert foto["label_de"] and foto["explanation_en"] and foto["hyper"]["network_dim"] == 16
    assert "cosine" in body["schedulers"] and "sd35_large" in [f["id"] for f in body["families"]]
    gpus = client.get("/api/lora/gpus").json
    assert gpus[0]["id"] == "cpu" and any(g["id"] == "rtx_4090" and g["vram_gb"] == 24 for g in gpus)


def test_upload_zip_checks_each_image_and_flags_the_cut_one(with_dataset: Any) -> None:
    client, _st, _ = with_dataset
    view = client.get("/api/lora/datasets/squares", headers=user("alice")).json
    assert view["owner"] == "alice" and view["blocking"] is False and view["card"] is None
    by_file = {i["file"]: i for i in view["images"]}
    assert len(by_file) == 5
    bad = by_file[BAD_IMAGE]
    assert any(p["severity"] == "error" for p in bad["problems"]) and bad["thumb_url"] is None
    good = by_file["square_00.png"]
    assert good["caption"].startswith("mgsq") and good["width"] == 256
    thumb = client.get(good["thumb_url"], headers=user("alice"))
    assert thumb.status_code == 200 and thumb.mimetype == "image/png" and thumb.data[:4] == b"\x89PNG"


def test_upload_several_files_with_captions(studio: Any) -> None:
    client, _st, tmp = studio
    from devserver_lora.train.native.tiny import write_planted_images

    src = write_planted_images(tmp / "loose", n=3, size=256)
    files = [(p.read_bytes(), p.name) for p in sorted(src.iterdir()) if p.suffix in (".png", ".txt")]
    r = upload(client, "bob", "loose", files)
    assert r.status_code == 201, r.json
    assert len(r.json["images"]) == 3 and all(i["caption"] for i in r.json["images"])


def _too_small(view: dict[str, Any]) -> set[str]:
    return {i["file"] for i in view["images"] if any(p["code"] == "image_too_small" for p in i["problems"])}


def test_image_sizes_are_judged_for_the_chosen_resolution_and_rejudged_for_the_plans(studio: Any) -> None:
    """256 px images are small for SD3.5's 1024 px but right for a 256 px training: the upload judges them at the
    resolution the page sends, and the view re-judges them at the plan's without reading the images again."""
    client, _st, tmp = studio
    zipped = planted_zip(tmp / "src")
    good = {f"square_0{i}.png" for i in range(4)}
    at_1024 = upload(client, "alice", "big", [(zipped, "a.zip")], family="sd35_large")
    assert at_1024.status_code == 201 and at_1024.json["resolution"] == 1024 and _too_small(at_1024.json) == good
    at_256 = upload(client, "alice", "small", [(zipped, "a.zip")], family="sd35_large", preset="fotostudio",
                    resolution="256")
    assert at_256.status_code == 201 and at_256.json["resolution"] == 256 and _too_small(at_256.json) == set()
    rejudged = client.get("/api/lora/datasets/small?resolution=1024", headers=user("alice")).json
    assert rejudged["resolution"] == 1024 and _too_small(rejudged) == good
    hint = next(p for i in rejudged["images"] for p in i["problems"] if p["code"] == "image_too_small")["hint"]
    assert "724x724" in hint  # half the area of 1024 x 1024, the check's own threshold
    # the broken image keeps its error; judging sizes changes nothing else
    assert [i["problems"] for i in rejudged["images"] if i["file"] == BAD_IMAGE] == \
           [i["problems"] for i in at_256.json["images"] if i["file"] == BAD_IMAGE]
    assert _too_small(client.get("/api/lora/datasets/big?resolution=256", headers=user("alice")).json) == set()
    # A preset without a resolution: the preset's (fotostudio: 512 px), and only that: the number of images is
    # judged by the plan, as the preset may still change (5 images are too few for fotostudio, fine for quick_test).
    foto = upload(client, "alice", "foto", [(zipped, "a.zip")], family="sd35_large", preset="fotostudio")
    assert foto.json["resolution"] == 512 and _too_small(foto.json) == good and foto.json["blocking"] is False
    # stored views stay as uploaded
    assert _too_small(client.get("/api/lora/datasets/small", headers=user("alice")).json) == set()


def test_bad_upload_resolution_or_preset_is_refused_by_field_and_writes_nothing(studio: Any) -> None:
    client, st, tmp = studio
    zipped = planted_zip(tmp / "src", bad=False)
    before = snapshot(st.config.data_dir)
    for bad in ("4096", "100", "big", "512.5"):
        assert _fields(upload(client, "alice", "x", [(zipped, "a.zip")], resolution=bad)) == {"resolution"}
    assert _fields(upload(client, "alice", "x", [(zipped, "a.zip")], preset="nope")) == {"preset"}
    assert snapshot(st.config.data_dir) == before
    assert upload(client, "alice", "x", [(zipped, "a.zip")]).status_code == 201
    assert _fields(client.get("/api/lora/datasets/x?resolution=99999", headers=user("alice"))) == {"resolution"}


def test_each_upload_refusal_writes_nothing(studio: Any) -> None:
    client, st, tmp = studio
    home = st.config.data_dir
    zipped = planted_zip(tmp / "src", bad=False)
    before = snapshot(home)
    assert _error(client.post("/api/lora/datasets", data={"name": "x"}), 403)["message"]  # nobody named
    assert _fields(upload(client, "alice", "../evil", [(zipped, "a.zip")])) == {"name"}
    assert _fields(upload(client, "alice", "", [(zipped, "a.zip")])) == {"name"}
    assert _fields(upload(client, "alice", "empty", [])) == {"files"}
    assert _fields(upload(client, "alice", "exe", [(b"MZ", "run.exe"), (zipped, "b.zip")])) == {"files"}
    assert _fields(upload(client, "alice", "twice", [(b"a", "a.txt"), (b"b", "a.txt")])) == {"files"}
    assert _fields(upload(client, "alice", "nopix", [(b"caption", "a.txt")])) == {"files"}
    r = upload(client, "alice", "notzip", [(b"this is not a zip", "data.zip")])
    assert r.status_code == 400
    # A ZIP that climbs out of its folder is refused by the training package's safe extraction.
    buf = io.BytesIO()
    import zipfile

    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("../../escape.png", b"x")
    assert upload(client, "alice", "climb", [(buf.getvalue(), "c.zip")]).status_code == 400
    assert snapshot(home) == before


def test_upload_size_limit_is_413_and_writes_nothing(tmp_path: Path) -> None:
    from devserver_lora.studio.config import Limits

    _app, client, st = make_studio(tmp_path / "home", limits=Limits(max_upload_bytes=50_000))
    before = snapshot(st.config.data_dir)
    r = upload(client, "alice", "big", [(b"\0" * 200_000, "big.png")])
    assert _error(r, 413)["message"].startswith("the upload is larger than")
    assert snapshot(st.config.data_dir) == before


def test_a_dataset_name_is_per_user_and_not_replaced(with_dataset: Any) -> None:
    client, _st, tmp = with_dataset
    zipped = planted_zip(tmp / "src2", bad=False)
    assert _error(upload(client, "alice", "squares", [(zipped, "a.zip")]), 409)["fields"][0]["field"] == "name"
    # Bob's "squares" is his own: uploads of two users never share a folder.
    assert upload(client, "bob", "squares", [(zipped, "a.zip")]).status_code == 201
    assert len(client.get("/api/lora/datasets/squares", headers=user("alice")).json["images"]) == 5
    assert len(client.get("/api/lora/datasets/squares", headers=user("bob")).json["images"]) == 4
    assert [d["owner"] for d in client.get("/api/lora/datasets", headers=user("bob")).json] == ["bob"]
    everyone = client.get("/api/lora/datasets?all=1", headers=user("teacher")).json
    assert sorted(d["owner"] for d in everyone) == ["alice", "bob"]
    assert client.get("/api/lora/datasets/squares?owner=alice", headers=user("bob")).status_code == 403
    assert client.get("/api/lora/datasets/squares?owner=alice", headers=user("teacher")).status_code == 200
    assert client.get("/api/lora/datasets/nope", headers=user("bob")).status_code == 404
    assert client.get("/api/lora/datasets/squares/thumbs/..%2Fview.json", headers=user("bob")).status_code in (400,
                                                                                                               404)


def test_card_put_validates_with_the_dataset_card_model(with_dataset: Any) -> None:
    client, st, _ = with_dataset
    before = snapshot(st.config.data_dir)
    r = client.put("/api/lora/datasets/squares/card", json={"title": "x", "consent": "maybe"}, headers=user("alice"))
    assert {"description", "source", "rights_holder", "licence", "consent", "cultural_context",
            "approved_by"} <= _fields(r)
    assert _fields(client.put("/api/lora/datasets/squares/card", data="[]", headers=user("alice"),
                              content_type="application/json")) == {"card"}
    assert snapshot(st.config.data_dir) == before
    card = {**CARD, "license": CARD["licence"]}
    del card["licence"]  # the card takes both spellings
    r = client.put("/api/lora/datasets/squares/card", json=card, headers=user("alice"))
    assert r.status_code == 200 and r.json["card"]["licence"] == "CC0-1.0"


def test_plan_is_the_clis_plan_and_its_command_runs_as_shown(with_dataset: Any, capsys: Any) -> None:
    client, st, _ = with_dataset
    client.put("/api/lora/datasets/squares/card", json=CARD, headers=user("alice"))
    r = client.post("/api/lora/plans", json=plan_body(), headers=user("alice"))
    assert r.status_code == 200, r.json
    body = r.json
    assert body["problems"] == [] and "peak about" in body["memory"]["explanation"]
    assert body["plan"]["hyper"]["max_train_steps"] == 4 and body["plan"]["num_images"] == 4  # the cut one left out
    argv = body["argv"]
    assert shlex.split(body["command"]) == argv and argv[1:3] == ["-m", "devserver_lora.train"]
    # The same argv through the CLI's own parser makes the same plan, and creates the job in the Studio's store.
    capsys.readouterr()
    assert train_main([*argv[3:], "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["plan"] == body["plan"]
    listed = client.get("/api/lora/jobs", headers=user("teacher")).json["jobs"]
    assert [j["id"] for j in listed] == [printed["job_id"]] and listed[0]["owner"] is None
    assert client.get("/api/lora/jobs", headers=user("alice")).json["jobs"] == []  # terminal jobs: teachers only


BAD_PLANS: list[tuple[dict[str, Any], set[str]]] = [
    ({"overrides": {"resolution": 128}}, {"hyper.resolution"}),
    ({"overrides": {"resolution": 2048}}, {"hyper.resolution"}),
    ({"overrides": {"learning_rate": 1e-7}}, {"hyper.learning_rate"}),
    ({"overrides": {"max_train_steps": 0}}, {"hyper.max_train_steps"}),
    ({"overrides": {"max_train_steps": "many"}}, {"hyper.max_train_steps"}),
    ({"overrides": {"lr_scheduler": "warp"}}, {"hyper.lr_scheduler"}),
    ({"overrides": {"network_dim": 64}}, {"hyper.network_dim"}),  # quick_test allows 1-16
    ({"overrides": {"network_dim": 8, "network_alpha": 40}}, {"hyper.network_alpha"}),
    ({"overrides": {"no_such_setting": 1}}, {"hyper.no_such_setting"}),
    ({"overrides": {"fp8_base": "yes"}}, {"hyper.fp8_base"}),
    ({"output_name": "../x"}, {"output_name"}),
    ({"trigger": "a,b"}, {"trigger"}),
    ({"family": "sd9"}, {"family"}),
    ({"preset": "turbo"}, {"preset"}),
    ({"backend": "shell"}, {"backend"}),
    ({"gpu": "quantum"}, {"gpu"}),
    ({"dataset": "../../etc"}, {"dataset"}),
    ({"extra": 1}, {"extra"}),
]


@pytest.mark.parametrize(("change", "named"), BAD_PLANS, ids=[str(c) for c, _ in BAD_PLANS])
def test_each_bad_plan_is_refused_by_field_and_writes_nothing(with_dataset: Any, change: dict[str, Any],
                                                              named: set[str]) -> None:
    client, st, _ = with_dataset
    client.put("/api/lora/datasets/squares/card", json=CARD, headers=user("alice"))
    before = snapshot(st.config.data_dir)
    body = plan_body(**change)
    if "overrides" in change:
        body["overrides"] = {**plan_body()["overrides"], **change["overrides"]}
    for route in ("/api/lora/plans", "/api/lora/jobs"):
        r = client.post(route, json=body, headers=user("alice"))
        assert _fields(r) == named, r.json
    assert snapshot(st.config.data_dir) == before


def test_several_bad_settings_are_named_together(with_dataset: Any) -> None:
    client, _st, _ = with_dataset
    r = client.post("/api/lora/plans", json=plan_body(overrides={"learning_rate": 1e-9, "resolution": 100,
                                                                 "lr_scheduler": "x", "max_train_steps": -1}),
                    headers=user("alice"))
    assert _fields(r) == {"hyper.learning_rate", "hyper.resolution", "hyper.lr_scheduler", "hyper.max_train_steps"}
    assert all(f["hint"] for f in r.json["error"]["fields"])


def test_plan_refusals_for_requests(studio: Any, with_dataset: Any) -> None:
    client, _st, _ = with_dataset
    assert _error(client.post("/api/lora/plans", json=plan_body()), 403)
    assert _error(client.post("/api/lora/plans", json=[1], headers=user("alice")), 400)
    assert _error(client.post("/api/lora/plans", json=plan_body(dataset="other"), headers=user("alice")), 404)
    assert _error(client.post("/api/lora/plans", json=plan_body(), headers=user("bob")), 404)  # not bob's
    assert _error(client.post("/api/lora/plans", json=plan_body(owner="alice"), headers=user("bob")), 403)
    assert client.post("/api/lora/plans", json=plan_body(owner="alice"), headers=user("teacher")).status_code == 200
    # A plan for the galerie preset (>= 16 GB) on a 12 GB card is refused by make_plan, saying so.
    r = client.post("/api/lora/plans", json=plan_body(preset="galerie", backend="kohya", gpu="rtx_3060", overrides={}),
                    headers=user("alice"))
    assert r.status_code == 400 and "16" in r.json["error"]["message"]


def test_jobs_need_a_card_then_belong_to_their_owner(with_dataset: Any) -> None:
    client, st, _ = with_dataset
    before = snapshot(st.config.data_dir)
    assert _fields(client.post("/api/lora/jobs", json=plan_body(), headers=user("alice"))) == {"card"}
    assert snapshot(st.config.data_dir) == before
    client.put("/api/lora/datasets/squares/card", json=CARD, headers=user("alice"))
    r = client.post("/api/lora/jobs", json=plan_body(), headers=user("alice"))
    assert r.status_code == 201, r.json
    job = r.json
    assert job["state"] == "created" and job["owner"] == "alice" and job["parent"] is None
    assert job["command"].split()[1:4] == ["-m", "devserver_lora.train", "run"] and job["id"] in job["command"]
    assert client.get(f"/api/lora/jobs/{job['id']}", headers=user("alice")).json["id"] == job["id"]
    assert client.get(f"/api/lora/jobs/{job['id']}", headers=user("bob")).status_code == 404
    assert client.get(f"/api/lora/jobs/{job['id'][:8]}", headers=user("alice")).status_code == 404  # exact ids only
    assert [j["id"] for j in client.get("/api/lora/jobs", headers=user("alice")).json["jobs"]] == [job["id"]]
    assert client.get("/api/lora/jobs", headers=user("bob")).json["jobs"] == []
    assert [j["id"] for j in client.get("/api/lora/jobs", headers=user("teacher")).json["jobs"]] == [job["id"]]
    # A variant keeps the link to its parent and changes only what it names.
    r = client.post(f"/api/lora/jobs/{job['id']}/variant", json={"overrides": {"learning_rate": 1e-3},
                                                                   "output_name": "squares_v2"},
                    headers=user("alice"))
    assert r.status_code == 201, r.json
    child = r.json
    assert child["parent"] == job["id"] and child["output_name"] == "squares_v2"
    assert st.store.get(child["id"]).plan.hyper.learning_rate == 1e-3
    assert st.store.get(child["id"]).plan.hyper.max_train_steps == 4
    assert _fields(client.post(f"/api/lora/jobs/{job['id']}/variant", json={"overrides": {"resolution": 1}},
                               headers=user("alice"))) == {"hyper.resolution"}
    assert _error(client.post(f"/api/lora/jobs/{job['id']}/variant", json={"x": 1}, headers=user("alice")), 400)
    # Resume before a run, install before done, a job of nobody: refused.
    assert _error(client.post(f"/api/lora/jobs/{job['id']}/resume", headers=user("alice")), 409)
    assert _error(client.post(f"/api/lora/jobs/{job['id']}/install", json={}, headers=user("alice")), 409)
    assert _error(client.post("/api/lora/jobs/nope/run", headers=user("alice")), 404)
    # The native backend has no base model configured here: run is refused before anything starts.
    r = client.post(f"/api/lora/jobs/{job['id']}/run", headers=user("alice"))
    assert r.status_code == 400 and "native" in r.json["error"]["message"] and r.json["error"]["fields"]
    assert st.store.get(job["id"]).state == "created"
    # Cancel a job that never ran; then delete it (its files go) and its variant.
    assert client.post(f"/api/lora/jobs/{job['id']}/cancel", headers=user("alice")).json["state"] == "cancelled"
    assert _error(client.post(f"/api/lora/jobs/{job['id']}/cancel", headers=user("alice")), 409)
    assert client.delete(f"/api/lora/jobs/{job['id']}", headers=user("bob")).status_code == 404
    assert client.delete(f"/api/lora/jobs/{job['id']}", headers=user("alice")).status_code == 204
    assert not (st.config.jobs_dir / job["id"]).exists()
    assert client.get(f"/api/lora/jobs/{job['id']}", headers=user("alice")).status_code == 404


def test_job_files_are_path_checked(with_dataset: Any) -> None:
    client, st, _ = with_dataset
    client.put("/api/lora/datasets/squares/card", json=CARD, headers=user("alice"))
    job_id = client.post("/api/lora/jobs", json=plan_body(), headers=user("alice")).json["id"]
    job_dir = st.config.jobs_dir / job_id
    (job_dir / "samples").mkdir()
    (job_dir / "samples" / "s.png").write_bytes(b"\x89PNG fake")
    (st.config.jobs_dir / "secret.png").write_bytes(b"no")
    (job_dir / "samples" / "link.png").symlink_to(st.config.jobs_dir / "secret.png")
    ok = client.get(f"/api/lora/jobs/{job_id}/files/samples/s.png", headers=user("alice"))
    assert ok.status_code == 200 and ok.data == b"\x89PNG fake"
    for bad in ("../secret.png", "samples/../../secret.png", "samples/link.png", "plan.py", "%2e%2e/secret.png",
                "samples/missing.png"):
        assert client.get(f"/api/lora/jobs/{job_id}/files/{bad}", headers=user("alice")).status_code == 404, bad
    assert client.get(f"/api/lora/jobs/{job_id}/files/samples/s.png", headers=user("bob")).status_code == 404
    assert _error(client.get(f"/api/lora/jobs/{job_id}/evaluation", headers=user("alice")), 404)


def test_events_replay_from_an_offset_and_end_at_a_final_state(with_dataset: Any) -> None:
    client, st, _ = with_dataset
    client.put("/api/lora/datasets/squares/card", json=CARD, headers=user("alice"))
    job_id = client.post("/api/lora/jobs", json=plan_body(), headers=user("alice")).json["id"]
    job = st.store.get(job_id)
    from devserver_lora.train.events import ProgressEvent, SampleEvent, StateEvent

    job.append_event(ProgressEvent(step=1, total_steps=4, loss=0.5, eta_s=3.0))
    job.append_event(SampleEvent(path=str(job.dir / "samples" / "a.png"), step=1, index=0, prompt="mgsq"))
    job.append_event(ProgressEvent(step=2, total_steps=4, loss=float("nan")))
    job.append_event(StateEvent(state="failed", message="it broke"))
    job.set_state("failed", message="it broke", diagnosis="nan_loss")
    events = _sse(client.get(f"/api/lora/jobs/{job_id}/events", headers=user("alice")).data)
    names = [e["event"] for e in events]
    assert names == ["state", "progress", "sample", "progress", "state", "failed"], names
    assert events[1]["data"] == {"step": 1, "total": 4, "loss": 0.5, "loss_is_nan": False, "eta_s": 3.0,
                                 "epoch": None, "lr": None}
    assert events[2]["data"]["url"].endswith(f"/api/lora/jobs/{job_id}/files/samples/a.png")
    assert events[3]["data"]["loss"] is None and events[3]["data"]["loss_is_nan"] is True
    assert events[5]["data"] == {"message": "it broke", "diagnosis": "nan_loss", "hint": None}
    # Each id is the byte offset after its line: resuming from one gives exactly what followed it.
    ids = [e["id"] for e in events]
    assert ids == sorted(ids) and ids[-1] == (job.dir / "events.jsonl").stat().st_size
    again = _sse(client.get(f"/api/lora/jobs/{job_id}/events", headers={**user("alice"),
                                                                         "Last-Event-ID": str(ids[2])}).data)
    assert [e["event"] for e in again] == ["progress", "state", "failed"]
    assert _error(client.get(f"/api/lora/jobs/{job_id}/events", headers={**user("alice"), "Last-Event-ID": "x"}),
                  400)
    assert client.get(f"/api/lora/jobs/{job_id}/events", headers=user("bob")).status_code == 404


def _sse(raw: bytes) -> list[dict[str, Any]]:
    out = []
    for block in raw.decode().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line and not line.startswith(":"))
        if "event" in fields:
            out.append({"event": fields["event"], "id": int(fields["id"]), "data": json.loads(fields["data"])})
    return out


def test_mounted_users_come_from_the_session(tmp_path: Path) -> None:
    from flask import Flask

    from devserver_lora.studio import mount

    who: dict[str, str | None] = {"user": None}
    app = Flask("devserver_standin")
    mount(app, data_dir=tmp_path / "home", user=lambda: who["user"], teachers=["t"], queue_poll_s=0,
          detect_gpu=False)
    client = app.test_client()
    assert client.get("/api/lora/me").json == {"user": None, "teacher": False, "mounted": True}
    # The header names nobody when mounted: only the session does.
    r = client.get("/api/lora/jobs", headers=user("alice"))
    assert r.status_code == 403 and "logged in" in r.json["error"]["message"]
    who["user"] = "t"
    assert client.get("/api/lora/me").json == {"user": "t", "teacher": True, "mounted": True}
    assert client.get("/api/lora/jobs").json == {"jobs": [], "queue": []}
    assert client.get("/lora").status_code == 200 and b"<html" in client.get("/lora").data.lower()


def test_mounted_without_accounts_teachers_come_from_the_hosts_own_check(tmp_path: Path) -> None:
    """DevServer has no user accounts: names are typed on the page, and a teacher is whoever the host's own check
    passes (its settings login), never whoever types a teacher's name."""
    from flask import Flask, session

    from devserver_lora.studio import mount

    app = Flask("devserver_standin")
    app.secret_key = "test"

    @app.post("/login")
    def login() -> Any:
        session["settings_authenticated"] = True
        return {"success": True}

    mount(app, data_dir=tmp_path / "home", teacher=lambda: session.get("settings_authenticated") is True,
          queue_poll_s=0, detect_gpu=False)
    admin, student = app.test_client(), app.test_client()
    assert student.get("/api/lora/me", headers=user("frau_meyer")).json == {
        "user": "frau_meyer", "teacher": False, "mounted": False}
    assert admin.post("/login").status_code == 200
    assert admin.get("/api/lora/me", headers=user("frau_meyer")).json["teacher"] is True
    assert admin.get("/api/lora/me").json == {"user": None, "teacher": False, "mounted": False}  # still needs a name
    r = student.get("/api/lora/jobs?all=1", headers=user("frau_meyer"))
    assert r.status_code == 403 or r.json["jobs"] == []


def test_mount_refuses_when_the_hosts_training_routes_would_answer_instead(tmp_path: Path) -> None:
    """Flask serves a path with the view registered first: DevServer's training blueprint registered before mount()
    would shadow ours, so mount() says so at start-up; mounted first, ours answer."""
    from flask import Blueprint, Flask

    from devserver_lora.errors import DevserverLoraError
    from devserver_lora.studio import mount

    def devservers_own() -> Blueprint:
        bp = Blueprint("training", __name__)
        bp.add_url_rule("/api/training/start", "start", lambda: {"message": "Training started"}, methods=["POST"])
        bp.add_url_rule("/api/training/status", "status", lambda: {"is_training": True, "shell": True})
        return bp

    late = Flask("late")
    late.register_blueprint(devservers_own())
    with pytest.raises(DevserverLoraError) as refused:
        mount(late, data_dir=tmp_path / "late", queue_poll_s=0, detect_gpu=False)
    assert "'training.start'" in refused.value.message and "Compress(app)" in (refused.value.hint or "")
    assert mount(late, data_dir=tmp_path / "off", queue_poll_s=0, detect_gpu=False, devserver_routes=False)

    spa = Flask("spa")  # a catch-all registered first does not count: the plain paths of ours win over it
    spa.add_url_rule("/<path:path>", "serve", lambda path: "index.html")
    mount(spa, data_dir=tmp_path / "spa", queue_poll_s=0, detect_gpu=False)
    assert spa.test_client().get("/api/training/status").json["is_training"] is False

    early = Flask("early")
    mount(early, data_dir=tmp_path / "early", queue_poll_s=0, detect_gpu=False)
    early.register_blueprint(devservers_own())
    status = early.test_client().get("/api/training/status").json
    assert "shell" not in status and status["is_training"] is False


def test_user_names_never_become_paths(studio: Any) -> None:
    client, st, tmp = studio
    zipped = planted_zip(tmp / "src", bad=False)
    r = upload(client, "../../root", "mine", [(zipped, "a.zip")])
    assert r.status_code == 201 and r.json["owner"] == "../../root"
    owners = [p.name for p in st.config.datasets_dir.iterdir()]
    assert len(owners) == 1 and owners[0].startswith("u-")
    assert client.get("/api/lora/me", headers=user("a\x01b")).json["user"] is None


def test_links_opened_by_the_browser_carry_the_user_in_the_cookie(with_dataset: Any) -> None:
    client, st, _ = with_dataset
    client.put("/api/lora/datasets/squares/card", json=CARD, headers=user("alice"))
    job = client.post("/api/lora/jobs", json=plan_body(trigger="mgsq"), headers=user("alice")).json
    assert job["dataset"] == "squares" and job["trigger"] == "mgsq" and job["overrides"]["max_train_steps"] == 4
    (st.config.jobs_dir / job["id"] / "report.html").write_text("<html>r</html>")
    url = f"/api/lora/jobs/{job['id']}/files/report.html"
    assert client.get(url).status_code == 403
    client.set_cookie("lora_studio_user", "alice")
    assert client.get(url).data == b"<html>r</html>"
    client.set_cookie("lora_studio_user", "bob")
    assert client.get(url).status_code == 404
    # A page-made job samples during training: the first default prompt, about three times per run, small on a CPU.
    from devserver_lora.train.evaluate.settings import load_eval_settings

    ev = load_eval_settings(st.store.get(job["id"]), create=False)
    assert len(ev.prompts) == 1 and "mgsq" in ev.prompts[0].prompt
    assert ev.sample_every_n_steps == 1 and ev.size == 128 and ev.steps == 4
