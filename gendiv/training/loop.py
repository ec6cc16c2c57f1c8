"""The accelerate training loop every gendiv trainer shares: seeding, progress, metrics logs, EMA, NaN guards,
atomic checkpoints and exact resume. Subclasses say what a step does (``train_step``), what to look at
(``evaluate``) and what to save for users (``export``).
"""
from __future__ import annotations

import copy
import csv
import json
import math
import os
import sys
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import set_seed
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ..errors import UserError
from ..fileio import folder_fingerprint
from ..models.sharding import full_state_dict, is_sharded, load_full_state_dict
from .checkpoint import (CheckpointError, checkpoint_step, latest_intact_checkpoint, point_latest, seal_checkpoint,
                         set_aside, tmp_dir_for)
from .ema import EmaProfile
from .config import ConfigError, check, check_allocation
from .performance import (adamw, apply_compile, apply_memory_format, apply_threads, keep_freed_memory,
                          resolve_mixed_precision)
from .run_lock import RunLock


class RunExistsError(ConfigError):
    """The output folder already holds a run and neither resume nor overwrite was asked for."""


# config keys that may change between a run and its resumption without changing what is computed
RESUME_MAY_CHANGE = ("run.steps", "run.max_minutes", "run.log_every", "run.sample_every", "run.checkpoint_every", "run.keep_checkpoints",
                     "run.progress", "run.stop_after", "run.resume", "run.overwrite", "run.trackers", "run.output_dir",
                     "run.threads", "eval.")


FINGERPRINTS = "fingerprints."  # config entries registered by register_fingerprint: content hashes, compared on resume


class NonFiniteError(FloatingPointError):
    """A loss or gradient became NaN/Inf; the message names the step, the tensor and the checkpoint kept."""


@dataclass
class RunConfig:
    output_dir: str = "runs/teacher"
    seed: int = 0
    steps: int = 2000
    batch_size: int = 256            # per process
    log_every: int = 25
    sample_every: int = 1000         # plots/metrics during training (0: only at the end)
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    mixed_precision: str | bool = "auto"  # auto | no | bf16 | fp16 (CUDA only); auto: bf16 for images where native
    channels_last: str | bool = "auto"  # auto: UNets in channels-last memory format
    compile: bool = False            # torch.compile the trained networks
    fused_optimizer: str | bool = "auto"  # auto: AdamW(fused=True) where PyTorch has it (CUDA, CPU)
    keep_freed_memory: str | bool = "auto"  # auto: on the CPU (glibc), reuse freed memory instead of page-faulting it
    threads: str | int = "auto"      # torch intra-op threads for the process (auto: 1 for point models, default for images)
    grad_clip: float = 1.0           # max gradient norm (0: off)
    trackers: list = field(default_factory=list)  # accelerate trackers, e.g. [tensorboard]
    resume: bool = False             # continue from the newest intact checkpoint in output_dir/checkpoints
    overwrite: bool = False          # output_dir holds a run: move it aside to <output_dir>.old-<time> and start anew
    stop_after: int | None = None    # end this invocation after this step, as a kill would; resume later
    max_minutes: float | None = None  # end the run (final checkpoint, evaluation, export) after this much training wall
                                      # time, at fewer than run.steps steps (equal-time comparisons); the clock is
                                      # the run's, kept in its checkpoints: a resumed run goes on counting
    progress: bool = True

    def __post_init__(self):
        if self.mixed_precision is False:  # YAML reads a bare `no` (mixed_precision=no) as false
            self.mixed_precision = "no"
        for key in ("steps", "batch_size", "log_every", "checkpoint_every", "keep_checkpoints"):
            check(getattr(self, key) >= 1, f"run.{key} must be ≥ 1, got {getattr(self, key)}")
        check(self.sample_every >= 0, f"run.sample_every must be ≥ 0 (0: only at the end), got {self.sample_every}")
        check(self.mixed_precision in ("auto", "no", "bf16", "fp16"),
              f"run.mixed_precision must be auto, no, bf16 or fp16, got {self.mixed_precision!r}")
        for key in ("channels_last", "fused_optimizer", "keep_freed_memory"):
            check(getattr(self, key) in ("auto", True, False), f"run.{key} must be auto, true or false, got {getattr(self, key)!r}")
        check(self.threads == "auto" or (type(self.threads) is int and self.threads >= 1),
              f"run.threads must be auto or an integer ≥ 1, got {self.threads!r}")
        check(self.grad_clip >= 0, f"run.grad_clip must be ≥ 0 (0: off), got {self.grad_clip}")
        check(0 <= self.seed < 2 ** 32, f"run.seed must be in [0, 2³² − 1] (NumPy's seed range), got {self.seed}")
        check(self.stop_after is None or self.stop_after >= 1, f"run.stop_after must be ≥ 1 or null, got {self.stop_after}")
        check(self.max_minutes is None or (isfinite_float(self.max_minutes) and self.max_minutes > 0),
              f"run.max_minutes must be > 0 or null, got {self.max_minutes}")
        check(not (self.resume and self.overwrite), "run.resume and run.overwrite exclude each other")
        check(bool(self.output_dir), "run.output_dir must not be empty")


class TrainingLoop:
    def __init__(self, run: RunConfig, config_dict: dict | None = None, image_data: bool = False):
        self.run = run
        self.out = Path(run.output_dir).expanduser()
        self.ckpt_root = self.out / "checkpoints"
        if run.mixed_precision == "fp16" and not torch.cuda.is_available():
            raise ConfigError("run.mixed_precision=fp16 needs a CUDA GPU; this machine has none (PyTorch's CPU autocast "
                              "computes bf16, not fp16): use run.mixed_precision=bf16 or no")
        _check_trackers(run.trackers)
        if self.out.exists() and not self.out.is_dir():
            raise ConfigError(f"run.output_dir {self.out} is a file; it must name a folder")
        self.restart_from_scratch = False
        self.lock: RunLock | None = None
        self._claim_output_dir()
        # the folder is given up once: by fit(), or when the trainer is dropped (e.g. its set-up failed)
        self.release_output_dir = weakref.finalize(self, self.lock.release) if self.lock is not None else lambda: None
        # AcceleratorState is a process-wide singleton; a second trainer in the same process (a teacher, then a
        # distillation run) may ask for another precision, so drop the old state but keep the distributed one.
        AcceleratorState._reset_state(reset_partial_state=False)
        # cpu=True on CPU-only machines is what makes accelerate see torchrun's ranks (MULTI_CPU over gloo).
        self.mixed_precision = resolve_mixed_precision(run.mixed_precision, image_data)
        self.threads = apply_threads(run.threads, image_data)
        if run.keep_freed_memory is not False:
            keep_freed_memory(run.keep_freed_memory)
        self.accelerator = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=self.mixed_precision, log_with=list(run.trackers) or None,
                                       project_dir=str(self.out))
        self.accelerator.wait_for_everyone()  # rank 0 may have moved a previous run aside
        self.out.mkdir(parents=True, exist_ok=True)
        set_seed(run.seed)  # identical model initialisation on every process
        self.gen = torch.Generator().manual_seed(run.seed * 9973 + self.accelerator.process_index)
        self.step = 0
        self.trained_s = 0.0  # training wall time of the run before this invocation (restored on resume)
        self._clock_start: float | None = None  # time.time() at which the run's clock read 0 (set by fit)
        self.ema: dict[str, tuple[torch.nn.Module, torch.nn.Module, EmaProfile]] = {}
        self.ema_updates: dict[str, int] = {}  # EMA updates so far, by network (a power-function EMA's clock)
        self.extra_state: dict[str, torch.nn.Module] = {}  # modules with buffers to checkpoint (e.g. ratio bins)
        self.config_dict = config_dict or {}

    def _claim_output_dir(self):
        """Own the run folder (run_lock.py) and never overwrite a run: refuse a folder that holds one, unless resuming
        or asked to move it aside. Process 0 holds the lock for all processes of a distributed run."""
        out, run = self.out, self.run
        main_process = int(os.environ.get("RANK", "0")) == 0
        if run.resume and not _holds_run(out):
            raise CheckpointError(f"--resume: no intact checkpoint in {self.ckpt_root} ({out} holds no run); "
                                  "run without --resume to start a new run")
        purpose = "resume it" if run.resume else "move it aside (--overwrite)" if run.overwrite else "start a run in it"
        lock = RunLock.acquire(out, purpose) if main_process else None
        try:
            if run.resume:
                self._check_resumable()
            elif _holds_run(out):
                if not run.overwrite:
                    raise RunExistsError(f"{out} already holds a run (checkpoints/metrics); continue it with --resume "
                                         f"(run.resume=true), or pass --overwrite (run.overwrite=true) to move it aside "
                                         f"to {out}.old-<time> and start anew, or choose another run.output_dir")
                if main_process:
                    lock = self._move_aside(lock)
        except UserError:
            if lock is not None:
                lock.release()
            raise
        self.lock = lock

    def _check_resumable(self):
        """A resume needs an intact checkpoint; a run stopped before its first one starts again from step 0."""
        folder, problems = latest_intact_checkpoint(self.ckpt_root)
        if folder is not None:
            return
        if problems:
            raise CheckpointError(f"--resume: no intact checkpoint in {self.ckpt_root} ({'; '.join(problems)}); "
                                  "pass --overwrite to move this run aside and start anew")
        self.restart_from_scratch = True
        print(f"note: {self.out} stopped before its first checkpoint (run.checkpoint_every="
              f"{self.run.checkpoint_every}); --resume starts it again from step 0", file=sys.stderr)

    def _move_aside(self, lock: RunLock) -> RunLock:
        """--overwrite: rename the old run to <dir>.old-<time> (nothing is deleted) while holding its lock, so no live
        run can be writing into it; then own the new, empty folder."""
        out = self.out
        stamp = time.strftime("%Y%m%d-%H%M%S")
        aside, n = out.with_name(f"{out.name}.old-{stamp}"), 1
        while aside.exists():
            aside, n = out.with_name(f"{out.name}.old-{stamp}-{n}"), n + 1
        lock.moved_to(aside)
        os.replace(out, aside)
        new_lock = RunLock.acquire(out)
        lock.release()
        print(f"moved the previous run in {out} to {aside}")
        return new_lock

    # -- to be provided by subclasses -------------------------------------------------------------
    def train_step(self) -> dict:
        raise NotImplementedError

    def evaluate(self, final: bool) -> dict:
        return {}

    def export(self):
        pass

    # -- helpers -----------------------------------------------------------------------------------
    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    def add_ema(self, name: str, module: torch.nn.Module, profile: EmaProfile):
        ema = copy.deepcopy(self.accelerator.unwrap_model(module)).eval().requires_grad_(False)
        self.ema[name] = (ema, module, profile)
        return ema

    @torch.no_grad()
    def update_ema(self, name: str):
        """One EMA update of ``name``; the update count (checkpointed) sets a power-function EMA's decay."""
        ema, src, profile = self.ema[name]
        self.ema_updates[name] = self.ema_updates.get(name, 0) + 1
        decay = profile.beta(self.ema_updates[name])
        for pe, ps in zip(ema.parameters(), self.accelerator.unwrap_model(src).parameters()):
            pe.lerp_(ps.detach().to(pe.dtype), 1 - decay)

    def check_finite(self, name: str, value: torch.Tensor):
        if not torch.isfinite(value).all():
            kept = self._set_aside_diverged(self.step + 1)
            raise NonFiniteError(f"step {self.step + 1}: {name} is not finite ({value.detach().flatten()[:4].tolist()}); "
                                 f"training stopped. Last good checkpoint: {kept or 'none written yet'}")

    def _set_aside_diverged(self, failed_step: int) -> Path | None:
        """After step ``failed_step`` diverged, the checkpoint of the step before it is not good either (resuming
        from it fails at once): rename such checkpoints ``*.diverged`` (kept, not deleted). Returns the newest good
        one."""
        if self.is_main and self.ckpt_root.is_dir():
            for folder in self.ckpt_root.glob("step-*"):
                step = checkpoint_step(folder)
                if step is not None and step >= failed_step - 1:
                    set_aside(folder, "diverged")
            point_latest(self.ckpt_root, latest_intact_checkpoint(self.ckpt_root)[0])
        return latest_intact_checkpoint(self.ckpt_root)[0]

    def _check_weights_finite(self):
        """Only finite states are checkpointed: every trained network and EMA copy, checked before writing."""
        # accelerate keeps every prepared network in _models (it has no public list of them)
        networks = {f"network {i}": self.accelerator.unwrap_model(m) for i, m in enumerate(self.accelerator._models)}
        networks.update({f"EMA of {name}": ema for name, (ema, _, _) in self.ema.items()})
        for label, module in networks.items():  # a sharded tensor's check covers all processes' shards
            bad = [n for n, p in module.named_parameters()
                   if not (torch.isfinite(p).all().full_tensor() if is_sharded(p) else torch.isfinite(p).all())]
            if bad:
                kept = self._set_aside_diverged(self.step)
                raise NonFiniteError(f"step {self.step}: {len(bad)} weight tensor(s) of {label} are not finite (first: "
                                     f"{bad[0]}); not checkpointed, training stopped. Last good checkpoint: "
                                     f"{kept or 'none written yet'}")

    def optimizer(self, params, lr: float, betas, weight_decay: float) -> torch.optim.Optimizer:
        return adamw(params, lr, betas, weight_decay, self.run.fused_optimizer)

    def speed_up(self, module: torch.nn.Module) -> torch.nn.Module:
        """The run's memory-format and compile switches, applied in place to a network before it trains."""
        return apply_compile(apply_memory_format(module, self.run.channels_last), self.run.compile)

    def clip_and_step(self, module, optimizer, loss, name: str):
        """backward → NaN guard on gradients → clip → step → zero_grad. Returns the gradient norm."""
        self.accelerator.backward(loss)
        params = [p for p in module.parameters() if p.grad is not None]
        if self.run.grad_clip and self.run.grad_clip > 0:
            norm = self.accelerator.clip_grad_norm_(params, self.run.grad_clip)
        else:
            norm = torch.norm(torch.stack([p.grad.norm() for p in params])) if params else torch.zeros(())
        self.check_finite(f"gradient norm of {name}", torch.as_tensor(norm))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(norm)

    def mean_over_processes(self, value: torch.Tensor) -> float:
        return float(self.accelerator.reduce(value.detach().float().reshape(1), "mean").item())

    # -- logs ----------------------------------------------------------------------------------------
    @property
    def log_path(self) -> Path:
        return self.out / "metrics.jsonl"

    def log(self, metrics: dict):
        if not self.is_main:
            return
        row = {"step": self.step, **{k: (round(v, 8) if isinstance(v, float) else v) for k, v in metrics.items()}}
        with open(self.log_path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.run.trackers:
            self.accelerator.log(metrics, step=self.step)

    def read_log(self) -> list[dict]:
        """metrics.jsonl's rows. A half-written last line (the run was killed while writing it) is dropped with a
        warning; a damaged line elsewhere is an error naming it."""
        if not self.log_path.exists():
            return []
        lines = self.log_path.read_text().splitlines()
        rows = []
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                if number < len(lines):
                    raise CheckpointError(f"{self.log_path}, line {number}, is not JSON ({line[:60]!r}); repair or "
                                          "delete that line") from None
                print(f"warning: dropped the half-written last line of {self.log_path} ({line[:60]!r})", file=sys.stderr)
        return rows

    def _write_log(self, rows: list[dict]):
        tmp = self.log_path.with_name(f".{self.log_path.name}.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
        os.replace(tmp, self.log_path)  # atomic: a kill leaves the old or the new log, whole

    def write_csv(self):
        if not self.is_main or not self.log_path.exists():
            return
        rows = self.read_log()
        keys = sorted({k for r in rows for k in r}, key=lambda k: (k != "step", k))
        with open(self.out / "metrics.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(rows)

    def _truncate_log(self, step: int):
        """On resume, drop log rows written after the checkpoint (they will be produced again)."""
        if self.is_main and self.log_path.exists():
            self._write_log([row for row in self.read_log() if row.get("step", 0) <= step])

    # -- checkpoints -----------------------------------------------------------------------------------
    def save_checkpoint(self):
        self._check_weights_finite()
        acc = self.accelerator
        tmp = tmp_dir_for(self.ckpt_root, self.step)
        if self.is_main:
            self.ckpt_root.mkdir(parents=True, exist_ok=True)
        acc.wait_for_everyone()
        acc.save_state(str(tmp))
        save_file({"state": self.gen.get_state()}, str(tmp / f"data_rng_{acc.process_index}.safetensors"))
        ema_states = {name: full_state_dict(ema, keep=self.is_main) for name, (ema, _, _) in self.ema.items()}  # whole
        if self.is_main:
            for name, state in ema_states.items():
                save_file(state, str(tmp / f"ema_{name}.safetensors"))
            for name, module in self.extra_state.items():
                save_file({k: v.contiguous().cpu() for k, v in module.state_dict().items()}, str(tmp / f"state_{name}.safetensors"))
            (tmp / "trainer_state.json").write_text(json.dumps({"step": self.step, "world_size": acc.num_processes,
                                                                "mixed_precision_ran": self.mixed_precision,
                                                                "ema_updates": self.ema_updates,
                                                                "trained_s": self._trained_s_now()}))
            (tmp / "config.json").write_text(json.dumps(self.config_dict, indent=1, default=str))
        acc.wait_for_everyone()
        if self.is_main:
            seal_checkpoint(self.ckpt_root, self.step, keep=self.run.keep_checkpoints)
        acc.wait_for_everyone()

    def _trained_s_now(self) -> float:
        """Training wall time of the run so far (before fit's loop starts: what a resume restored)."""
        return self.trained_s if self._clock_start is None else time.time() - self._clock_start

    def _logged_time_s(self, step: int) -> float:
        """A checkpoint written before trainer_state kept the clock: the time_s of its step's log row, else 0."""
        times = [r["time_s"] for r in self.read_log() if r.get("step") == step and "time_s" in r]
        return float(times[-1]) if times else 0.0

    def load_checkpoint(self) -> bool:
        folder, problems = latest_intact_checkpoint(self.ckpt_root)
        if folder is None:
            raise CheckpointError(f"no intact checkpoint in {self.ckpt_root}" + (f" ({'; '.join(problems)})" if problems else ""))
        if problems and self.is_main:
            print(f"warning: skipped damaged checkpoint(s): {'; '.join(problems)}; resuming from {folder.name}")
        self._check_resume_config(folder)
        acc = self.accelerator
        state = json.loads((folder / "trainer_state.json").read_text())
        if state["world_size"] != acc.num_processes:
            raise CheckpointError(f"checkpoint {folder} was written by {state['world_size']} processes; "
                                  f"resume it with the same number (got {acc.num_processes})")
        try:
            acc.load_state(str(folder))
        except (RuntimeError, KeyError, ValueError) as e:  # e.g. "size mismatch for ..." from an older checkpoint
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CheckpointError(f"checkpoint {folder} does not fit this run's networks or optimisers ({first[:300]}); "
                                  "resume with the config it was written with, or start a new run.output_dir") from None
        self.gen.set_state(load_file(str(folder / f"data_rng_{acc.process_index}.safetensors"))["state"])
        for name, (ema, _, _) in self.ema.items():
            load_full_state_dict(ema, load_file(str(folder / f"ema_{name}.safetensors")))
        for name, module in self.extra_state.items():
            module.load_state_dict(load_file(str(folder / f"state_{name}.safetensors")))
        self.step = state["step"]
        self.ema_updates = dict(state.get("ema_updates", {}))  # absent before power EMAs: constant decays need none
        self._truncate_log(self.step)
        self.trained_s = state["trained_s"] if "trained_s" in state else self._logged_time_s(self.step)
        return True

    def _check_resume_config(self, folder: Path):
        """Refuse to resume with a config that changes what is computed; say exactly what differs."""
        saved_path = folder / "config.json"
        if not saved_path.is_file() or not self.config_dict:
            return
        saved = _flat(json.loads(saved_path.read_text()))
        now = _flat(json.loads(json.dumps(self.config_dict, default=str)))
        for key in [k for k in now if k.startswith(FINGERPRINTS) and k not in saved]:  # written before fingerprints
            print(f"warning: {folder} has no content fingerprint of {key.removeprefix(FINGERPRINTS)}; cannot check "
                  "that it is unchanged", file=sys.stderr)
            saved[key] = now[key]
        # an entry whose content is fingerprinted may name another path to the same content (a moved teacher folder)
        same_content = {k for k in now if (FINGERPRINTS + k) in now and saved.get(FINGERPRINTS + k) == now[FINGERPRINTS + k]}
        diffs = [_describe_difference(k, saved.get(k, "(absent)"), now.get(k, "(absent)"))
                 for k in sorted(set(saved) | set(now))
                 if saved.get(k) != now.get(k) and not k.startswith(RESUME_MAY_CHANGE) and k not in same_content]
        if diffs:
            raise CheckpointError(f"cannot resume {folder}: the config differs from the one it was written with "
                                  f"({'; '.join(diffs)}). Restore these values, or start a new run in another "
                                  "run.output_dir")

    def register_fingerprint(self, key: str, path):
        """Record the content fingerprint of the file or folder a config entry ``key`` names (e.g. a teacher folder):
        a resume then refuses to continue if that content changed, not only if the path did."""
        self.config_dict.setdefault(FINGERPRINTS.rstrip("."), {})[key] = folder_fingerprint(path)

    def sample_shape(self) -> tuple | None:
        """One training sample's shape, for the memory estimate before the first step; trainers with a data source
        (``self.source``) have it there."""
        source = getattr(self, "source", None)
        return tuple(source.shape) if source is not None and hasattr(source, "shape") else None

    def _check_batch_fits(self):
        """Refuse a batch that cannot fit, with the figure, before the first step allocates it. A lower bound: x₀,
        noise, x_σ and the network output (4 batch-sized tensors) plus the widest activation a backward pass keeps."""
        shape = self.sample_shape()
        if not shape:
            return
        networks = [self.accelerator.unwrap_model(m) for m in self.accelerator._models]
        per_sample = 4 * math.prod(shape) + max((_widest_activation(m, shape) for m in networks), default=0)
        check_allocation(f"run.batch_size={self.run.batch_size} of samples shaped {list(shape)}",
                         self.run.batch_size * per_sample * 4, self.accelerator.device,
                         "lower run.batch_size" + (" or data.image_size" if len(shape) > 1 else ""))

    # -- the loop ----------------------------------------------------------------------------------------
    def _time_is_up(self, t0: float, minutes: float) -> bool:
        """Any process past the limit ends the run on every process, on the same step."""
        up = torch.tensor([float(time.time() - t0 >= 60 * minutes)], device=self.accelerator.device)
        return bool(self.accelerator.reduce(up, "max").item()) if self.accelerator.num_processes > 1 else bool(up.item())

    def fit(self) -> dict:
        try:
            return self._fit()
        finally:
            self.release_output_dir()

    def _fit(self) -> dict:
        run = self.run
        self._check_batch_fits()
        if run.resume and self.restart_from_scratch:
            self._truncate_log(0)
        elif run.resume:
            self.load_checkpoint()
            if self.is_main:
                print(f"resumed from step {self.step} ({self.ckpt_root})")
        if run.trackers:
            self.accelerator.init_trackers("gendiv", config=_flat(self.config_dict))
        bar = tqdm(total=run.steps, initial=self.step, disable=not (run.progress and self.is_main), desc="train")
        t0 = self._clock_start = time.time() - self.trained_s  # a resumed run's time_s and budget go on from its checkpoint
        last = run.steps
        while self.step < last:
            metrics = self.train_step()
            self.step += 1
            bar.update(1)
            if run.max_minutes is not None and self._time_is_up(t0, run.max_minutes):
                last = self.step  # this step is the run's last: logged, checkpointed, evaluated and exported as such
            if self.step % run.log_every == 0 or self.step == last:
                metrics["time_s"] = time.time() - t0
                self.log(metrics)
                bar.set_postfix({k: f"{v:.4g}" for k, v in metrics.items() if isinstance(v, float) and k != "time_s"})
            if run.sample_every and self.step % run.sample_every == 0 and self.step < last:
                self.log(self.evaluate(final=False))
            if self.step % run.checkpoint_every == 0 or self.step == last:
                self.save_checkpoint()
            if run.stop_after is not None and self.step >= run.stop_after and self.step < last:
                bar.close()
                self.write_csv()
                return {"stopped_at": self.step}
        bar.close()
        summary = self.evaluate(final=True)
        self.log({f"final/{k}": v for k, v in summary.items()})
        self.write_csv()
        self.export()
        self.accelerator.wait_for_everyone()
        if run.trackers:
            self.accelerator.end_training()
        return summary


def _check_trackers(trackers: list):
    """Every tracker named must be one accelerate knows and is installed (accelerate only warns and logs nothing)."""
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS, get_available_trackers

    for name in trackers:
        if name not in LOGGER_TYPE_TO_CLASS:
            raise ConfigError(f"run.trackers: unknown tracker {name!r}; accelerate knows {sorted(LOGGER_TYPE_TO_CLASS)}")
        if name not in [str(t) for t in get_available_trackers()]:
            raise ConfigError(f"run.trackers: {name} is not installed (pip install {name}), so nothing would be logged")


def _widest_activation(module: torch.nn.Module, shape: tuple) -> int:
    """Elements per sample of the widest layer output that is certainly computed: the widest linear layer, and for
    images the first convolution, which runs at the input resolution."""
    widths = [m.out_features for m in module.modules() if isinstance(m, torch.nn.Linear)]
    first_conv = next((m for m in module.modules() if isinstance(m, torch.nn.Conv2d)), None)
    if first_conv is not None and len(shape) == 3:
        widths.append(first_conv.out_channels * shape[1] * shape[2])
    return max(widths, default=0)


def _holds_run(out: Path) -> bool:
    return out.is_dir() and any((out / name).exists() for name in ("checkpoints", "metrics.jsonl", "pipeline"))


def _describe_difference(key: str, saved, now) -> str:
    if key.startswith(FINGERPRINTS):
        return (f"the content of {key.removeprefix(FINGERPRINTS)} changed since the checkpoint was written "
                f"(fingerprint {str(saved)[:12]}… → {str(now)[:12]}…)")
    return f"{key}: {saved} → {now}"


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        elif isinstance(v, (int, float, str, bool)) or v is None:
            out[f"{prefix}{k}"] = v if v is not None else "none"
        else:
            out[f"{prefix}{k}"] = str(v)
    return out


def isfinite_float(x) -> bool:
    return isinstance(x, float) and math.isfinite(x)
