"""KohyaBackend: run sd-scripts in its own venv as a child process, turn its output into job events.

Each run (and each resume) is an *attempt* writing into `work/kohya/run-N/`; finished
checkpoints are published into the job's `outputs/` under Kohya's names, never
replacing a file. Why not let sd-scripts write into `outputs/` directly: after
`--resume` its step counter restarts at 0, so a step-named checkpoint of the second
attempt would silently overwrite the first attempt's file of the same name. We add
the attempt's step offset instead (see tests/fixtures/kohya/run_log_resume.txt).

Resume continuity (sd-scripts 48d368fa, train_network.py): `--resume` alone takes the
epoch to start from `current_step // steps_per_epoch` of the state's train_state.json,
and `current_step` counts from 0 in every attempt, so the second resume started from a
wrong epoch and overran the plan. `--initial_epoch E+1` makes sd-scripts ignore the
state's step count and start at epoch E+1 (its own steps per epoch, so our count of them
cannot be wrong). It starts whole epochs only (mid-epoch it would repeat the epoch's
batches without `--skip_until_initial_step`, whose step count is off by the skipped
epochs), so a resume goes back to the last epoch-end state. What sd-scripts still counts
per attempt, we make absolute: the step in file names, progress and `ss_steps`
(`ss_epoch` and epoch file names are absolute already). Since the step counter restarts,
a resumed attempt ends when its epochs run out: at the planned step, because every plan that may
run on Kohya is whole epochs (plan.step_schedule rounds requested steps up); a plan made for the
native backend that is not gets a warning here.
"""

from __future__ import annotations

import codecs
import json
import os
import re
import select
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ...errors import BackendError, DatasetError, PlanError, Problem
from ...lora.header import LoraFileError, is_complete, read_header, write_with_metadata
from ...paths import atomic_write_json, check_simple_name, copy_no_overwrite, free_name
from ..events import CheckpointEvent, DoneEvent, ErrorEvent, LogEvent, ProgressEvent
from . import args as kargs
from . import models as kmodels
from . import progress as kprog
from . import samples as ksamples
from . import venv as kvenv
from .diagnose import Diagnosis, Watcher, diagnose

if TYPE_CHECKING:
    from ..evaluate.settings import EvalSettings
    from ..jobs import Job
    from ..plan import TrainingPlan
    from ..settings import Settings

_STEP_NAME = re.compile(r"^(?P<stem>.+)-step(?P<step>\d{8})\.safetensors$")
# sd-scripts' EPOCH_STATE_NAME "{}-{:06d}-state": the only states a resume starts from (see the module doc).
_EPOCH_STATE = re.compile(r"^(?P<stem>.+)-(?P<epoch>\d{6})-state$")
_EPOCH_NAME = re.compile(r"^(?P<stem>.+)-(?P<epoch>\d{6})\.safetensors$")


def _kill_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


class _Attempt:
    """Bookkeeping of one sd-scripts process: its folder, the step offset, what was already published."""

    def __init__(self, root: Path, index: int, offset: int) -> None:
        self.dir = root / f"run-{index}"
        self.index = index
        self.offset = offset
        self.published: dict[str, Path] = {}


class KohyaBackend:
    """The `Backend` for Kohya sd-scripts (see `devserver_lora.train.backends`)."""

    name = "kohya"

    def __init__(
        self,
        settings: Settings | None,
        *,
        kohya_dir: Path | str | None = None,
        num_processes: int = 1,
        progress_interval_s: float = 0.5,
        nan_limit: int = 3,
        grace_s: float = 15.0,
    ) -> None:
        self.settings = settings
        self.kohya_dir = Path(kohya_dir) if kohya_dir else (settings.kohya_dir if settings else None)
        self.num_processes = max(1, int(num_processes))
        self.progress_interval_s = progress_interval_s
        self.nan_limit = nan_limit
        self.grace_s = grace_s
        self.samples_off = False

    def _models_dir(self) -> Path | None:
        return self.settings.models_dir if self.settings else None

    # ---------------------------------------------------------------- checks
    def preflight(self, job: Job, *, probe: bool = True) -> list[Problem]:
        """Every finding about the setup for this job, plus a dry generation of its Kohya files and argv."""
        plan = job.plan
        gpu = plan.gpu
        problems = kvenv.environment_problems(
            self.kohya_dir,
            family=plan.family,
            models_dir=self._models_dir(),
            needs_bitsandbytes=_needs_bnb(plan),
            gpu_capability=gpu.compute_capability if gpu else None,
            gpu_name=gpu.name if gpu else None,
            probe=probe,
        )
        try:
            self._command(job, _Attempt(Path(job.work_dir) / "kohya", 0, 0), None, write=False)
        except (PlanError, DatasetError, BackendError) as exc:
            diagnosis = exc.diagnosis if isinstance(exc, BackendError) else None
            if not any(p.code == (diagnosis or "") for p in problems):
                problems.append(Problem(exc.message, code="kohya_args", hint=exc.hint))
        else:
            problems.append(Problem("the generated config.toml, dataset.toml and argv pass the recorded flag list "
                                    "and dataset schema", code="kohya_args", severity="info"))
        return problems

    # ---------------------------------------------------------------- run
    def run(self, job: Job, *, resume: bool = False, stop: threading.Event | None = None) -> Path:
        stop = stop or threading.Event()
        plan = job.plan
        check_simple_name(plan.output_name, what="LoRA output name")  # it becomes file and folder names
        root = Path(job.work_dir) / "kohya"
        root.mkdir(parents=True, exist_ok=True)
        ledger = _read_ledger(root)
        resume_state, offset, epoch = (None, 0, 0)
        if resume:
            resume_state, offset, epoch = _last_state(root, ledger, plan.output_name)
            if resume_state is None:
                raise BackendError(
                    f"job {job.id} has no saved training state to resume from",
                    hint="it stopped before the end of its first epoch; start it again with `run`",
                    diagnosis="no_state",
                )
            _warn_partial_epoch(job, plan, offset)
        attempt = _Attempt(root, _next_run_index(root, ledger), offset)
        attempt.dir.mkdir()  # never exist_ok: sd-scripts would overwrite the saved states of an earlier attempt
        ledger["attempts"].append({"dir": attempt.dir.name, "offset": offset,
                                   "resume_from": str(resume_state) if resume_state else None,
                                   "initial_epoch": epoch + 1 if resume_state else None})
        atomic_write_json(root / "attempts.json", ledger)
        install, cmd = self._command(job, attempt, resume_state, write=True, initial_epoch=epoch + 1)
        atomic_write_json(Path(job.work_dir) / "command.json", {"argv": cmd.argv, "cwd": str(cmd.cwd)})
        what = (f"resuming from {resume_state.name} at step {offset}, epoch {epoch + 1}" if resume_state
                else "starting")
        job.append_event(LogEvent(message=f"{what}: {' '.join(cmd.argv[:2])} (attempt {attempt.index})"))
        try:
            return self._supervise(job, plan, install, cmd, attempt, stop)
        except _SamplingCrashed as crash:
            # A sample must never cost the run: go on from the last saved state, without samples.
            job.append_event(LogEvent(level="warning", message=f"sd-scripts stopped while rendering samples{crash.at} "
                                      f"({crash.diagnosis.message}); training goes on without samples"))
            self.samples_off = True
            return self.run(job, resume=_last_state(root, _read_ledger(root), plan.output_name)[0] is not None,
                            stop=stop)

    def _command(self, job: Job, attempt: _Attempt, resume_state: Path | None, *, write: bool,
                 initial_epoch: int | None = None):
        plan = job.plan
        install = kvenv.find_kohya(self.kohya_dir)
        models = kmodels.find_model_files(plan.family, self._models_dir())
        if models.missing:
            role, names = next(iter(models.missing.items()))
            raise BackendError(
                f"the {role} file for {plan.family} is missing",
                hint=f"put {' or '.join(names)} into the models folder (DEVSERVER_LORA_MODELS); `check` lists all",
                diagnosis="model_missing",
            )
        if write:  # what install judges the LoRA against (a test-sized checkpoint is not the family's model)
            job.set_state(job.state, base_arch=kmodels.checkpoint_arch(models))
        cmd = kargs.build_command(
            plan,
            python=install.python,
            scripts_dir=install.scripts_dir,
            models=models,
            work_dir=Path(job.work_dir),
            output_dir=attempt.dir,
            logging_dir=Path(job.logs_dir) / "tensorboard",
            tokenizer_cache_dir=install.tokenizer_cache_dir,
            resume_state=resume_state,
            initial_epoch=initial_epoch if resume_state is not None else None,
            num_processes=self.num_processes,
            write=write,
            extra_config=ksamples.sample_config(self._eval_settings(job), Path(job.work_dir), write=write),
        )
        return install, cmd

    def _eval_settings(self, job: Job) -> EvalSettings | None:
        """The job's sample prompts and interval (None: no samples, e.g. after sampling crashed sd-scripts)."""
        if self.samples_off:
            return None
        from ..evaluate.settings import load_eval_settings

        try:
            return load_eval_settings(job)
        except Exception as exc:  # noqa: BLE001 - a broken eval_settings.json costs the samples, not the run
            job.append_event(LogEvent(level="warning", message=f"no samples during training: {exc}"))
            self.samples_off = True
            return None

    def _env(self, install: kvenv.KohyaInstall, family: str) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"
        env.pop("PYTHONPATH", None)  # our packages must not shadow the venv's
        if install.tokenizer_cache_dir is not None and not kvenv.tokenizer_problems(install, family):
            env["HF_HUB_OFFLINE"] = "1"
            env["TRANSFORMERS_OFFLINE"] = "1"
        return env

    def _supervise(self, job, plan, install, cmd, attempt: _Attempt, stop: threading.Event) -> Path:
        logs = Path(job.logs_dir)
        logs.mkdir(parents=True, exist_ok=True)
        outputs = Path(job.outputs_dir)
        outputs.mkdir(parents=True, exist_ok=True)
        try:
            proc = subprocess.Popen(  # noqa: S603 - argument list from build_command, never a shell
                cmd.argv,
                cwd=cmd.cwd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=self._env(install, plan.family),
                start_new_session=True,  # its own group, so a cancel reaches its data-loader workers too
            )
        except OSError as exc:
            raise BackendError(f"cannot start {cmd.argv[0]}: {exc.strerror or exc}", hint=kvenv.SETUP_HINT,
                               diagnosis="kohya_venv_broken") from exc
        _record_child(job, proc.pid)
        state = _RunState(job, plan, attempt, outputs, self.progress_interval_s)
        state.samples = ksamples.SampleWatcher(job, self._eval_settings(job), attempt.dir, offset=attempt.offset,
                                               output_name=plan.output_name)
        finished = threading.Event()
        stopper = threading.Thread(target=self._stop_when, args=(stop, finished, proc, state), daemon=True)
        stopper.start()
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        splitter = kprog.LineSplitter()
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        try:
            with open(logs / "kohya.log", "ab") as raw_log:
                while True:
                    # Wake up now and then even when sd-scripts is silent (a long step): publish a checkpoint
                    # that finished writing, and send progress held back by the throttle.
                    ready, _, _ = select.select([fd], [], [], 0.5)
                    if not ready:
                        state.tick()
                        continue
                    chunk = os.read(fd, 65536)
                    if not chunk:
                        break
                    raw_log.write(chunk)
                    for line in splitter.feed(decoder.decode(chunk)):
                        state.line(line)
                    if state.watcher.nan_losses >= self.nan_limit and not state.stopping:
                        state.stop_reason = "nan"
                        stop.set()
                for line in splitter.flush():
                    state.line(line)
                raw_log.flush()
        except BaseException:
            # We can no longer watch it (our bug, a full disk, KeyboardInterrupt): never leave it training blind.
            _kill_group(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
        returncode = proc.wait()
        state.done = True
        stop_requested = stop.is_set() and state.stop_reason != "nan"
        finished.set()  # release the stopper; never `stop`: it is the caller's, and a retry without samples reuses it
        stopper.join(timeout=5)
        state.flush_progress()
        state.publish_ready(final=True)
        state.samples.poll(final=True)
        final_src = attempt.dir / f"{plan.output_name}.safetensors"
        final = state.published.get(final_src.name)
        diag = diagnose(
            returncode=returncode,
            watcher=state.watcher,
            output_exists=final is not None,
            plan=plan,
            cancelled=stop_requested,
        )
        if diag is not None and state.samples.sampling and not stop_requested:
            raise _SamplingCrashed(diag, state.samples.sampling_step)
        if diag is not None:
            self._fail(job, diag)
        assert final is not None
        job.append_event(DoneEvent(lora_path=str(final), steps=state.last_step))
        return final

    def _fail(self, job: Job, diag: Diagnosis) -> None:
        job.append_event(ErrorEvent(diagnosis=diag.code, message=diag.message, hint=diag.hint))
        raise BackendError(diag.message, hint=diag.hint, diagnosis=diag.code)

    def _stop_when(self, stop: threading.Event, finished: threading.Event, proc: subprocess.Popen,
                   state: _RunState) -> None:
        while not stop.wait(0.2):
            if finished.is_set():
                return
        if state.done or proc.poll() is not None:
            return
        state.stopping = True
        # SIGINT first: Python raises KeyboardInterrupt, so sd-scripts unwinds; then TERM, then KILL.
        for sig, wait_s in ((signal.SIGINT, self.grace_s), (signal.SIGTERM, self.grace_s / 2), (signal.SIGKILL, 5)):
            _kill_group(proc.pid, sig)
            try:
                proc.wait(timeout=wait_s)
                return
            except subprocess.TimeoutExpired:
                continue


class _RunState:
    """Live state of one attempt: parses lines, throttles progress events, publishes finished checkpoints."""

    def __init__(self, job: Job, plan: TrainingPlan, attempt: _Attempt, outputs: Path, interval: float) -> None:
        self.job, self.plan, self.attempt, self.outputs = job, plan, attempt, outputs
        self.interval = interval
        self.watcher = Watcher()
        self.epoch: int | None = None
        self.total_epochs: int | None = None
        self.last_step = attempt.offset
        self.pending: list[Path] = []
        self.published = attempt.published
        self._last_emit = 0.0
        self._unsent: kprog.StepLine | None = None
        self._last_bar: kprog.StepLine | None = None
        self._sent: tuple[int, float | None] = (-1, None)
        self.stopping = False
        self.stop_reason: str | None = None
        self.done = False
        self._logged: set[str] = set()
        self.samples: ksamples.SampleWatcher | None = None

    def line(self, line: str) -> None:
        self.watcher.feed(line)
        item = kprog.parse_line(line)
        if self.samples is not None:
            self.samples.line(line, trained=isinstance(item, kprog.StepLine))
            if isinstance(item, kprog.StepLine):
                self.samples.poll()  # a step after sampling: its files are complete
        if len(self.watcher.signs) > len(self._logged):
            for code, text in self.watcher.signs.items():
                if code not in self._logged:
                    self._logged.add(code)
                    if code != "traceback":  # only a marker; the line after it says what happened
                        self.job.append_event(LogEvent(level="error", message=text[:500]))
        if item is None:
            return
        if self.pending:
            self.publish_ready()
        if isinstance(item, kprog.StepLine):
            self.watcher.loss(item.loss)
            self.last_step = self.attempt.offset + item.step
            # sd-scripts draws a step twice: at progress_bar.update(1) still with the previous step's avr_loss
            # (none on an attempt's first step), then, after sampling and step checkpoints, at set_postfix with
            # its own. The first is held back (the tick sends it if the second is slow) so that an event carries
            # its step's loss.
            last, self._last_bar = self._last_bar, item
            stale = item.step > 0 and (item.loss is None or (last is not None and item.step > last.step
                                                            and item.loss == last.loss))
            self._unsent = item
            now = time.monotonic()
            due = now - self._last_emit >= self.interval or item.step >= item.total
            if kprog.is_nan(item.loss) or (due and not stale):
                self.flush_progress()
        elif isinstance(item, kprog.EpochLine):
            self.epoch, self.total_epochs = item.epoch, item.total
        elif isinstance(item, kprog.TotalsLine):
            self.total_epochs = item.total_epochs or self.total_epochs
        elif isinstance(item, kprog.CheckpointLine):
            # sd-scripts prints this BEFORE writing; the file is published once complete.
            self.pending.append(self.attempt.dir / Path(item.path).name)
        elif isinstance(item, kprog.ModelSavedLine):
            self.publish_ready()

    def tick(self) -> None:
        if self.samples is not None:
            self.samples.poll()
        if self.pending:
            self.publish_ready()
        if self._unsent is not None and time.monotonic() - self._last_emit >= self.interval:
            self.flush_progress()

    def flush_progress(self) -> None:
        item = self._unsent
        if item is None:
            return
        step = self.attempt.offset + item.step
        self._unsent = None
        if (step, item.loss) == self._sent and not kprog.is_nan(item.loss):
            return  # a redraw (a refresh, the bar's close); a step's own loss after its held-back draw is sent
        self._sent = (step, item.loss)
        self._last_emit = time.monotonic()
        self.job.append_event(
            ProgressEvent(
                step=step,
                total_steps=max(item.total, step),
                epoch=self.epoch,
                total_epochs=self.total_epochs,
                loss=item.loss,
                eta_s=item.eta_s,
                it_per_s=item.it_per_s,
            )
        )

    def publish_ready(self, *, final: bool = False) -> None:
        """Link complete checkpoints into outputs/ under their corrected Kohya names."""
        candidates = list(self.pending)
        if final:  # also anything sd-scripts wrote without us seeing the line
            candidates += sorted(self.attempt.dir.glob("*.safetensors"))
        still = []
        for src in candidates:
            if src.name in self.published:
                continue
            if not src.is_file() or not is_complete(src):
                if not final:
                    still.append(src)
                continue
            name, step, epoch = _published_name(src.name, self.attempt.offset)
            dest = _publish_checkpoint(src, self.outputs / name, self.attempt.offset)
            self.published[src.name] = dest
            self.job.append_event(CheckpointEvent(path=str(dest), step=step if step is not None else self.last_step,
                                                  epoch=epoch if epoch is not None else self.epoch))
        self.pending = still


class _SamplingCrashed(Exception):
    """sd-scripts died after announcing samples and before its next step: the run goes on without samples."""

    def __init__(self, diagnosis: Diagnosis, step: int | None) -> None:
        super().__init__(diagnosis.message)
        self.diagnosis = diagnosis
        self.at = f" at step {step}" if step is not None else ""


def _publish_checkpoint(src: Path, dest: Path, offset: int) -> Path:
    """Put a finished checkpoint into outputs/ without replacing any file; a resumed attempt's `ss_steps` (counted
    from its own start) is made absolute in the published copy. Tensor bytes are copied unchanged, so sd-scripts'
    `sshs_model_hash` (a hash of the tensor data only) stays valid."""
    if offset:
        try:
            meta = dict(read_header(src).metadata)
        except LoraFileError:
            meta = {}
        if meta.get("ss_steps", "").isdigit():
            meta["ss_steps"] = str(int(meta["ss_steps"]) + offset)
            return write_with_metadata(src, dest, meta)
    dest = free_name(dest)
    try:
        os.link(src, dest)
    except OSError:
        dest = copy_no_overwrite(src, dest)
    return dest


def _warn_partial_epoch(job: Job, plan: TrainingPlan, offset: int) -> None:
    per_epoch = plan.steps_per_epoch
    total = int(plan.hyper.max_train_steps)
    if per_epoch > 0 and total % per_epoch:
        end = -(-total // per_epoch) * per_epoch
        job.append_event(LogEvent(level="warning", message=(
            f"the plan's {total} steps are not whole epochs of {per_epoch} steps: sd-scripts restarts its step count "
            f"when it resumes (at step {offset}) and ends this run when its epochs run out, at step {end}; plan "
            "the job for the kohya backend (its plans are whole epochs) to end exactly")))


def _published_name(name: str, offset: int) -> tuple[str, int | None, int | None]:
    m = _STEP_NAME.match(name)
    if m:
        step = int(m["step"]) + offset
        return f"{m['stem']}-step{step:08d}.safetensors", step, None
    m = _EPOCH_NAME.match(name)
    if m:
        return name, None, int(m["epoch"])
    return name, None, None


def _needs_bnb(plan: TrainingPlan) -> bool:
    return plan.memory.use_8bit_optimizer or "8bit" in plan.hyper.optimizer.lower()


def _record_child(job: Job, pid: int) -> None:
    try:
        job.set_state("running", child_pid=pid, child_pgid=pid)
    except Exception as exc:  # noqa: BLE001 - bookkeeping must not kill a started training
        job.append_event(LogEvent(level="warning", message=f"could not record the trainer pid: {exc}"))


_RUN_DIR = re.compile(r"^run-(?P<index>[1-9]\d{0,8})$")


def _read_ledger(root: Path) -> dict:
    """attempts.json: which run-N/ folders exist and at which step each began. No file: no attempt yet.

    A damaged ledger is refused, never read as empty: an empty ledger would make `resume` report no saved
    state and lose the step offsets that name the checkpoints of every earlier attempt.
    """
    path = root / "attempts.json"
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {"attempts": []}
    except OSError as exc:
        raise _ledger_error(path, f"cannot be read ({exc.strerror or exc})") from exc
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _ledger_error(path, f"is not valid JSON ({exc})") from exc
    attempts = data.get("attempts") if isinstance(data, dict) else None
    if not isinstance(attempts, list):
        raise _ledger_error(path, 'has no "attempts" list')
    for i, entry in enumerate(attempts):
        ok = (isinstance(entry, dict) and isinstance(entry.get("dir"), str) and _RUN_DIR.match(entry["dir"])
              and isinstance(entry.get("offset", 0), int) and entry.get("offset", 0) >= 0)
        if not ok:
            raise _ledger_error(path, f"attempt {i + 1} is not a run-N folder with a step offset: {entry!r}"[:300])
    return data


def _ledger_error(path: Path, what: str) -> BackendError:
    return BackendError(
        f"the Kohya attempt ledger {path} {what}; nothing was started or changed",
        hint=f"restore attempts.json from a backup to resume. Without it the saved states in {path.parent}/run-*/ "
        "cannot be resumed with the right step numbers: rename the file (e.g. to attempts.json.damaged) and `run` "
        "the job again to train from step 0 in a new run folder (the earlier run folders are kept)",
        diagnosis="ledger_damaged",
    )


def _next_run_index(root: Path, ledger: dict) -> int:
    """One past every run-N/ the ledger names or the disk holds: a run folder is never reused."""
    taken = [int(m["index"]) for m in (_RUN_DIR.match(e["dir"]) for e in ledger["attempts"]) if m]
    taken += [int(m["index"]) for m in (_RUN_DIR.match(p.name) for p in root.iterdir()) if m]
    return max(taken, default=0) + 1


def _state_complete(state_dir: Path) -> bool:
    """accelerate's save_state writes the RNG states last (`random_states_<process>.pkl`, after the weights, the
    optimizer and the scheduler), sd-scripts' train_state.json first (its pre-save hook): a state a cancel cut short
    has the one without the other, and resuming from it would fail inside sd-scripts."""
    return (state_dir / "train_state.json").is_file() and any(state_dir.glob("random_states_*.pkl"))


def _last_state(root: Path, ledger: dict, output_name: str) -> tuple[Path | None, int, int]:
    """The most advanced complete epoch-end state over all attempts: its folder, absolute step (the next attempt's
    offset) and the epoch it completed. Step-named and end-of-training states are never resumed from (module doc)."""
    best: tuple[int, int, Path] | None = None
    for entry in ledger["attempts"]:
        adir = root / entry["dir"]
        offset = int(entry.get("offset", 0))
        for state_dir in adir.glob(f"{output_name}-*-state"):
            m = _EPOCH_STATE.match(state_dir.name)
            if m is None or m["stem"] != output_name:
                continue
            if not _state_complete(state_dir):
                continue
            ts = state_dir / "train_state.json"
            try:
                data = json.loads(ts.read_text(encoding="utf-8"))
                step = offset + int(data["current_step"])
                epoch = int(data.get("current_epoch", m["epoch"]))
            except (OSError, ValueError, KeyError, TypeError, json.JSONDecodeError, AttributeError):
                continue
            key = (step, epoch, state_dir)
            if best is None or key[:2] > best[:2]:
                best = key
    if best is None:
        return None, 0, 0
    return best[2], best[0], best[1]
