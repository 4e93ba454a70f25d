"""Shared pieces of the command-line entry points: logging setup and the mapping of errors to exit codes."""

import logging
import os
import signal
import sys

from gru_jax.errors import InputError, RunError

EXIT_RUN_FAILED = 1
EXIT_BAD_INPUT = 2
# A command stopped by a signal exits with 128 + the signal's number, as shells report it: 130 for
# SIGINT, 143 for SIGTERM.
SIGNAL_EXIT_BASE = 128


def setup_logging(verbose=False):
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    # orbax and absl log every file operation at INFO.
    for name in ("absl", "orbax", "jax", "gensim", "matplotlib", "smart_open"):
        logging.getLogger(name).setLevel(logging.WARNING)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def add_common_flags(parser):
    from gru_jax.compilation_cache import default_compilation_cache_dir

    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    parser.add_argument("--verbose", action="store_true", help="log at DEBUG level")
    parser.add_argument("--compilation-cache", default=default_compilation_cache_dir(), metavar="DIR",
                        help="directory of JAX's persistent compilation cache, so that a rerun on the same "
                        "shapes compiles nothing (default %(default)s)")
    parser.add_argument("--no-compilation-cache", action="store_true",
                        help="compile everything in this process and write nothing to the compilation cache")
    group = parser.add_argument_group("multi-process runs", "start the same command once per process; see "
                                      "docs/multi_device.md")
    group.add_argument("--distributed", action="store_true",
                       help="call jax.distributed.initialize first (implied by the three flags below); on Cloud "
                       "TPU, Slurm and Open MPI it detects their values, elsewhere give them")
    group.add_argument("--coordinator-address", help="HOST:PORT of the coordinator service that process 0 starts")
    group.add_argument("--num-processes", type=int, help="number of processes in the run")
    group.add_argument("--process-id", type=int, help="this process's index, 0 to num-processes - 1")


def _one_line(error):
    return " ".join(line.strip() for line in str(error).splitlines() if line.strip())


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _fail(args, message, exit_code):
    """Print `message` as one 'error:' line and return `exit_code`, or re-raise the current error with --debug."""
    if args.debug:
        raise
    print(f"error: {message}", file=sys.stderr)
    return exit_code


def run_main(function, args):
    """Call `function(args)`; print errors as one line and return the process exit code.

    Exit codes: 0 on success, 2 for invalid input, 1 for a run that failed, and 128 + the signal number
    after SIGINT or SIGTERM. With `args.debug` errors propagate with their traceback.
    """
    setup_logging(getattr(args, "verbose", False))
    import jax

    from gru_jax.compilation_cache import enable_compilation_cache
    from gru_jax.training import Interrupted

    if not getattr(args, "no_compilation_cache", True):
        enable_compilation_cache(args.compilation_cache)

    # Outside the training loop, SIGTERM stops the command as Ctrl-C does; the loop itself defers both
    # signals until it has saved a checkpoint.
    try:
        previous_sigterm = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    except ValueError:
        previous_sigterm = None  # Not the main thread, where signals cannot be caught.
    try:
        settings = [getattr(args, name, None) for name in ("coordinator_address", "num_processes", "process_id")]
        if getattr(args, "distributed", False) or any(value is not None for value in settings):
            from gru_jax.parallel import initialize_distributed

            initialize_distributed(*settings)
        function(args)
    except InputError as error:
        return _fail(args, _one_line(error), EXIT_BAD_INPUT)
    except RunError as error:
        return _fail(args, _one_line(error), EXIT_RUN_FAILED)
    except jax.errors.JaxRuntimeError as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return _fail(args, f"the XLA computation failed ({first_line}). If the device ran out of memory, lower "
                     "--batch-size, or set --max-length when training.", EXIT_RUN_FAILED)
    except OSError as error:
        if error.filename is None:
            return _fail(args, _one_line(error), EXIT_RUN_FAILED)
        return _fail(args, f"{error.filename}: {error.strerror}. Check the path and its permissions.",
                     EXIT_RUN_FAILED)
    except Interrupted as stop:
        print(f"{stop}. Continue with the same command and --resume.", file=sys.stderr)
        return SIGNAL_EXIT_BASE + signal.Signals[stop.signal_name]
    except KeyboardInterrupt as stop:
        name = stop.args[0] if stop.args else "SIGINT"
        print(f"interrupted by {name} before the command finished.", file=sys.stderr)
        return SIGNAL_EXIT_BASE + signal.Signals[name]
    finally:
        if previous_sigterm is not None:
            signal.signal(signal.SIGTERM, previous_sigterm)
    return 0
