"""Shared CLI plumbing: typed errors become one clear line on stderr and a meaningful exit code.

Exit codes: 0 success; 1 partial failure (batch jobs) or unexpected error; 2 bad input;
3 checkpoint problem; 4 engines folder problem; 5 parity failure; 6 backend unavailable;
7 non-finite values. (click's own usage errors also exit 2.)
"""

from __future__ import annotations

import functools
import os
import sys
import warnings

import click

from maskst.errors import MaskstError

EXIT_CODES_HELP = ("Exit codes: 0 ok, 1 some batch jobs failed, 2 bad input, 3 checkpoint problem, "
                   "4 engines folder problem, 5 parity failure, 6 backend unavailable, 7 NaN/inf produced.")


MAX_THREADS = 1024  # far above any CPU these runtimes schedule on; a typo such as 100000 would hang thread creation


def _warn_oversubscribed(ctx, param, value):
    if value is not None and value > (os.cpu_count() or 1):
        click.echo(f"warning: --threads {value} is more than this machine's {os.cpu_count()} CPUs; sessions run slower "
                   "when threads outnumber cores", err=True)
    return value


def threads_option(help_text: str):
    """``--threads N``: 1..MAX_THREADS, warned about above the machine's CPU count (the option every CLI shares)."""
    return click.option("--threads", type=click.IntRange(1, MAX_THREADS), default=None, callback=_warn_oversubscribed,
                        help=help_text)


def _show_warning(message, category, filename, lineno, file=None, line=None):
    click.echo(f"warning: {message}", err=True)


def run_cli(func):
    """Decorator for click commands: MaskstError -> 'error: ...' on stderr and its exit code."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        warnings.showwarning = _show_warning
        try:
            return func(*args, **kwargs)
        except MaskstError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted; nothing partial was left behind", err=True)
            sys.exit(130)

    return wrapper
