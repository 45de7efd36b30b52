"""Run-time set-up shared by the entry points: logging, seeds, determinism, autocast, the CLI
error contract (SkdError -> one line on stderr, exit status 2), the stop signals, and a
torch.compile that recovers from a damaged inductor cache."""
from __future__ import annotations

import atexit
import contextlib
import functools
import logging
import multiprocessing
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Callable

import torch



def setup_logging(is_main: bool = True) -> None:
    logging.basicConfig(level=logging.INFO if is_main else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S",
                        stream=sys.stdout, force=True)


def seed_everything(seed: int, deterministic: bool = False) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    elif torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True


def configure_numerics(tf32: bool) -> None:
    """--tf32: whether float32 convolutions and matmuls may run as TF32 on GPUs that have it.

    PyTorch lets cuDNN convolutions use TF32 by default; False (skd's default) turns that off for
    cuDNN and matmul, so "float32" means float32, the numerics the original trained with.
    No effect on the CPU.
    """
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.set_float32_matmul_precision("high" if tf32 else "highest")


def configure_threads(threads: int) -> None:
    """--threads: torch's intra-op CPU threads for this process; 0 leaves torch's choice (one per
    core). A CPU run's float sums are split across the threads, so its figures depend on the
    count in the last digits; a fixed count makes them the same on machines with other core
    counts, and lets several one-thread runs share a machine without slowing each other down."""
    if threads:
        torch.set_num_threads(threads)
    logging.getLogger("skd.runtime").info("torch CPU threads: %d%s", torch.get_num_threads(),
                                          "" if threads else " (torch's choice; --threads sets it)")


def configure_runtime(args) -> None:
    """The process-wide runtime flags of skd.options.add_runtime_args: --tf32 and --threads
    (skd-train, skd-eval and skd-test call this once, after logging is set up)."""
    configure_numerics(args.tf32)
    configure_threads(args.threads)


def autocast_factory(amp: str, device: torch.device) -> Callable[[], contextlib.AbstractContextManager]:
    """A zero-argument context-manager factory: torch.amp.autocast for --amp bf16/fp16, else a no-op."""
    if amp == "off":
        return contextlib.nullcontext
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return functools.partial(torch.autocast, device_type=device.type, dtype=dtype)


# --- signals ------------------------------------------------------------------------------------

# What ends a run with a checkpoint: SIGTERM (systemd, `kill`, Slurm and Kubernetes at pre-emption
# or the time limit, torchrun forwarding its own), SIGINT (Ctrl-C), and the warning signals
# schedulers can be told to send ahead of the end (Slurm's `--signal=USR1@120`, or USR2).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2)


class StopSignals:
    """Note the first stop signal instead of dying of it; the training loop checkpoints at the end
    of the step and exits with 128 + the signal's number. `restore()` puts the previous handlers
    back (for callers that outlive the run, such as tests)."""

    def __init__(self):
        self.signum = 0
        self._previous = {s: signal.signal(s, self._note) for s in STOP_SIGNALS}

    def _note(self, signum, _frame) -> None:
        if not self.signum:
            self.signum = signum

    def restore(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def ignore_stop_signals() -> None:
    """In a DataLoader worker: leave the stop signals to the main process, which checkpoints and
    then shuts the workers down (a signal to the whole process group reaches them too, and would
    otherwise kill them first and the main process with them).

    SIGINT, SIGUSR1 and SIGUSR2 are ignored. SIGTERM stays blocked and a thread waits for it: sent
    by the worker's parent (multiprocessing terminating its workers at exit, or the DataLoader
    ending one that does not stop), it ends the worker at once; sent by anyone else (`kill --
    -PGID`, systemd, a scheduler), it is ignored. Ignoring it outright would let the parent's exit
    wait forever for workers that an exception kept it from shutting down.
    """
    quiet = {signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2}
    for s in quiet:
        signal.signal(s, signal.SIG_IGN)
    if not hasattr(signal, "sigwaitinfo"):  # not on macOS: there, ignore it outright
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    signal.pthread_sigmask(signal.SIG_UNBLOCK, quiet)
    parent = multiprocessing.parent_process()
    parent_pid = parent.pid if parent is not None else os.getppid()

    def wait_for_sigterm() -> None:
        while True:
            if signal.sigwaitinfo({signal.SIGTERM}).si_pid == parent_pid:
                os._exit(0)

    threading.Thread(target=wait_for_sigterm, name="skd-sigterm", daemon=True).start()


@contextlib.contextmanager
def stop_signals_blocked():
    """Hold the stop signals while worker processes are forked (they inherit the mask), so none
    dies of one before its worker_init_fn ignores them; the main process gets them when the block
    ends."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


# --- torch.compile that survives a damaged inductor cache -----------------------------------------

_log = logging.getLogger("skd.compile")
_private_cache: str | None = None


def _compile_failure(exc: BaseException) -> bool:
    """Whether `exc` is the compiler failing (not the model): dynamo's BackendCompilerFailed,
    which wraps what inductor raised (a C++ compile error, an ImportError of a damaged cached
    .so, ...), or inductor's own error type."""
    from torch._dynamo.exc import BackendCompilerFailed
    kinds: tuple[type, ...] = (BackendCompilerFailed,)
    try:
        from torch._inductor.exc import InductorError
        kinds += (InductorError,)
    except ImportError:
        pass
    return isinstance(exc, kinds)


def use_private_inductor_cache() -> str:
    """Point inductor at a fresh cache folder for the rest of the process (TORCHINDUCTOR_CACHE_DIR,
    read at every compilation) and forget its in-memory caches; the folder is removed at exit."""
    global _private_cache
    if _private_cache is None:
        _private_cache = tempfile.mkdtemp(prefix="skd-inductor-")
        atexit.register(shutil.rmtree, _private_cache, True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = _private_cache
    try:
        from torch._inductor.utils import clear_caches
        clear_caches()
    except ImportError:
        pass
    import torch._dynamo
    torch._dynamo.reset()
    return _private_cache


def _short(exc: BaseException) -> str:
    inner = getattr(exc, "inner_exception", None) or exc
    text = " ".join(str(inner).split())
    return f"{type(inner).__name__}: {text[:160]}" if text else type(inner).__name__


class RecoveringCompile:
    """`torch.compile(fn)` for --compile, which a broken compiler cannot stop.

    A compilation happens at a call (the first, and again on a new shape or mode). When it fails
    (BackendCompilerFailed: e.g. inductor's shared cache holds a 0-byte .so left by a killed
    compile, "ImportError: ... file too short"), it is retried once with a private inductor cache
    (`use_private_inductor_cache`); if it fails again, `fn` runs eagerly from then on, after one
    warning line. The backward is compiled with the forward (not lazily at the first backward),
    so its failures are caught here too. A failed compilation raises before anything runs, so the
    retried call computes exactly what the first would have.
    """

    def __init__(self, fn: Callable, what: str):
        self.eager = fn
        self.what = what
        self.compiled: Callable | None = torch.compile(fn)

    def __call__(self, *args, **kwargs):
        if self.compiled is None:
            return self.eager(*args, **kwargs)
        # a second try only when the shared cache (not ours already) may be at fault
        tries = 1 if _private_cache is not None and os.environ.get("TORCHINDUCTOR_CACHE_DIR") == _private_cache else 2
        for attempt in range(tries):
            try:
                return self._call_compiled(*args, **kwargs)
            except Exception as e:
                if not _compile_failure(e):
                    raise
                failure = e
            if attempt + 1 < tries:
                cache = os.environ.get("TORCHINDUCTOR_CACHE_DIR", "inductor's default cache")
                _log.warning("--compile: compiling %s failed (%s); retrying with a private inductor cache %s "
                             "instead of %s", self.what, _short(failure), use_private_inductor_cache(), cache)
        _log.warning("--compile: %s cannot be compiled (%s); running it eagerly (slower, same results)",
                     self.what, _short(failure))
        self.compiled = None
        return self.eager(*args, **kwargs)

    def _call_compiled(self, *args, **kwargs):
        from torch._functorch import config as functorch_config
        with functorch_config.patch(force_non_lazy_backward_lowering=True):
            return self.compiled(*args, **kwargs)
