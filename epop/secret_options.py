"""
Options that take a secret, or the file that holds one, are typed in full.

C{getopt}, under C{twisted.python.usage}, takes any unique prefix of a long
option: C{--proxy-password s3cret} was read as C{--proxy-password-file
s3cret}, and the error about that "file" then printed the password on the
terminal, in the shell's scroll-back and in logs.  Refusing the abbreviation
before C{getopt} sees it, without repeating the value, keeps the secret out
of every message.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from twisted.python import usage

from epop.messages import Text

__all__ = ["refuse_abbreviated_secrets"]


def refuse_abbreviated_secrets(
    arguments: Sequence[str],
    options: usage.Options,
    secrets: Iterable[str],
    *,
    anywhere: bool = False,
) -> None:
    """
    Refuse a long option in C{arguments} that abbreviates one of C{secrets}.

    Arguments are walked as C{getopt} would: a value that follows its option
    is skipped, so a value that looks like an option is not taken for one.

    @param options: whose C{longOpt} and C{shortOpt} say which options take
        a value.
    @param secrets: long names (without C{--}) of the options whose value is
        a secret or the file of one.
    @param anywhere: options may follow other arguments (C{gnu_getopt});
        otherwise the first other argument ends them (C{getopt}).
    @raise usage.UsageError: naming the option typed and the one it
        abbreviates, never the value.
    """
    secrets = tuple(secrets)
    takes_value = {name.rstrip("="): name.endswith("=") for name in options.longOpt}
    short_with_value = {c for c, after in zip(options.shortOpt, options.shortOpt[1:] + " ") if after == ":"}
    position = 0
    while position < len(arguments):
        argument = arguments[position]
        position += 1
        if argument == "--":
            return
        if not argument.startswith("-") or argument == "-":
            if anywhere:
                continue
            return
        if not argument.startswith("--"):
            for index, letter in enumerate(argument[1:], start=2):
                if letter in short_with_value:
                    position += index == len(argument)  # the value is the next argument
                    break
            continue
        name, equals, _ = argument[2:].partition("=")
        if name in takes_value:
            position += takes_value[name] and not equals
            continue
        meant = [secret for secret in secrets if name and secret.startswith(name)]
        if meant:
            full = " or ".join(f"--{secret}" for secret in meant)
            raise usage.UsageError(
                Text(
                    "--{name} is not an option: write {full} in full (an option that takes a "
                    "password, a key or the file of one is never abbreviated; its value is not "
                    "repeated here)",
                    name=name,
                    full=full,
                )
            )
        found = [known for known in takes_value if name and known.startswith(name)]
        if len(found) == 1:
            position += takes_value[found[0]] and not equals
