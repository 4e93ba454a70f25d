"""What every command-line entry point shares: logging setup and turning errors into exit codes."""

import logging
import os
import sys

from gru_jax.errors import InputError, RunError

EXIT_RUN_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


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
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    parser.add_argument("--verbose", action="store_true", help="log at DEBUG level")


def run_main(function, args):
    """Call `function(args)`; print errors as one line and return the process exit code."""
    setup_logging(getattr(args, "verbose", False))
    from gru_jax.training import Interrupted

    try:
        function(args)
    except InputError as error:
        if args.debug:
            raise
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except RunError as error:
        if args.debug:
            raise
        print(f"error: {error}", file=sys.stderr)
        return EXIT_RUN_FAILED
    except Interrupted as stop:
        print(f"{stop}. Continue with the same command and --resume.", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0
