"""One-line errors for the entry points in launch/: `cli.run(main)` replaces `app.run(main)`.

A mistake a user can make (an unknown, mistyped or ill-typed flag or `--config.x.y` field, a
missing file, checkpoint or tokenizer, a budget that does not fit: `UserError`, `ConfigError`,
`FileNotFoundError`) ends in one line on stderr, `error: ...`, naming the flag, field or path and
what to do, with exit status 2. `--verbose` shows the traceback instead. Any other exception is
a bug and keeps its traceback. `--check_only`: the launchers stop after their checks;
`--print_config`: they print the config and stop (`start`). `--host_malloc` (default auto) is
applied before `main` runs (`runtime/host_malloc.py`).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable

from absl import app, flags

from cleaner_jax.runtime import host_malloc
from cleaner_jax.runtime.config import ConfigError

flags.DEFINE_bool("verbose", False, "Show the traceback of a command-line or config error.")
CHECK_ONLY = flags.DEFINE_bool(
    "check_only", False, "Parse the flags, check the paths and budgets, and exit (a dry run)."
)
PRINT_CONFIG = flags.DEFINE_bool(
    "print_config", False, "Print the config (variant and overrides applied) and exit."
)


class UserError(Exception):
    """A mistake in the command line or in what it points at; the message says what to do."""


USER_ERRORS = (UserError, ConfigError, FileNotFoundError, NotADirectoryError)


def _fail(message: str) -> None:
    sys.stderr.write(f"error: {' '.join(message.split())} (--verbose shows the traceback)\n")
    sys.exit(2)


def _unknown_field(error: Exception, argv: list[str]) -> str:
    """ml_collections' KeyError/AttributeError for a mistyped override, as the flag it came from
    (its message: 'name' and, where it has one, 'Did you mean "x" instead of "name"?')."""
    text = str(error.args[0] if error.args else error)
    hint = re.search(r'Did you mean "([^"]+)" instead of "([^"]+)"', text)
    key = hint.group(2) if hint else (re.findall(r"[A-Za-z_]\w*", text) or ["?"])[0]
    names = [a.split("=")[0] for a in argv if a.startswith("--config.")]
    flag = next((n for n in names if key in n.split(".")), f"--config...{key}")
    suggestion = f' (did you mean "{hint.group(1)}"?)' if hint else ""
    return f"{flag}: the config has no field {key!r}{suggestion}; --print_config lists them"


def run(main: Callable[[list[str]], None]) -> None:
    """`app.run(main)` with user errors (flag parsing included) reported in one line."""
    verbose = any(a in ("--verbose", "--verbose=true", "--verbose=True") for a in sys.argv[1:])

    def parse(argv: list[str]) -> list[str]:
        try:
            return flags.FLAGS(argv)
        except flags.Error as e:
            if verbose:
                raise
            _fail(f"{e}; --helpshort lists the flags")
        except (AttributeError, KeyError) as e:  # a mistyped --config.x.y
            if verbose:
                raise
            _fail(_unknown_field(e, argv))

    def guarded(argv: list[str]) -> None:
        try:
            # Before main starts jax's CPU client (see runtime/host_malloc.py).
            try:
                host_malloc.configure(host_malloc.HOST_MALLOC.value)
            except RuntimeError as e:  # an explicit --host_malloc=reuse that cannot take effect
                raise UserError(f"{e}; use --host_malloc=auto or default") from e
            main(argv)
        except USER_ERRORS as e:
            if verbose:
                raise
            _fail(str(e))

    app.run(guarded, flags_parser=parse)


def check_workdir(workdir: str) -> None:
    """Metrics, TensorBoard and HF exports are written with plain file IO: no URLs."""
    if "://" in workdir:
        raise UserError(
            f"--workdir={workdir}: a URL; metrics and HF exports are written with plain file "
            "IO, so pass a local or mounted path (e.g. the bucket mounted with gcsfuse)"
        )


def start(config, mode: str, workdir: str | None, model_dir: str = "") -> bool:
    """The launchers' common start: `--print_config` prints `config` and returns False;
    otherwise checks the workdir (unless None) and the config (`config.check_config(config,
    mode, model_dir)`) and returns True. The launcher then stops if `CHECK_ONLY`."""
    from cleaner_jax.runtime.config import check_config

    if PRINT_CONFIG.value:
        sys.stdout.write(f"{config}\n")
        return False
    if workdir is not None:
        if not workdir:
            raise UserError("--workdir is required: where checkpoints, metrics and exports go")
        check_workdir(workdir)
    check_config(config, mode, model_dir)
    return True
