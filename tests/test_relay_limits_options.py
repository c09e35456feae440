"""
The slow-client limits as an administrator sets them: C{twistd epop}
options, C{--config} keys and L{RelaySettings}, down to the relay factory.
"""

from __future__ import annotations

from pathlib import Path

from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from epop.relay import tap
from epop.testing import MemoryJournalWriter
from epop.relay.service import RelaySettings, make_relay_service

#: Each option, a value other than its default, and the factory attribute it sets.
OPTIONS = [
    ("hello-timeout", "12", "hello_timeout", 12.0),
    ("frame-timeout", "7.5", "frame_timeout", 7.5),
    ("upload-min-rate", "512", "upload_min_rate", 512.0),
    ("upload-grace", "600", "upload_grace", 600.0),
    ("checks-per-connection", "3", "checks_per_connection", 3),
]


class LimitOptionsTests(SynchronousTestCase):
    def parse(self, *args: str) -> tap.Options:
        options = tap.Options()
        options.parseOptions(list(args))
        return options

    def factory_for(self, settings: RelaySettings) -> object:
        writer = MemoryJournalWriter()
        service = make_relay_service(MemoryReactorClock(), settings, journal_writer=lambda: writer)
        return service.factory

    def test_defaults(self) -> None:
        """Without options: 30 s for a HELLO or a frame, 1 KiB/s after 5 minutes, 6 and 30 checks a minute."""
        settings = self.parse().settings()
        self.assertEqual(
            (settings.hello_timeout, settings.frame_timeout, settings.upload_min_rate, settings.upload_grace,
             settings.checks_per_connection, settings.checks_per_client),
            (30.0, 30.0, 1024.0, 300.0, 6, 30),
        )
        factory = self.factory_for(settings)
        self.assertEqual(factory.check_rates.per_minute, 30)

    def test_command_line_reaches_the_factory(self) -> None:
        """Each option given to twistd epop is the relay factory's setting."""
        args = [item for name, value, _, _ in OPTIONS for item in (f"--{name}", value)]
        factory = self.factory_for(self.parse(*args, "--checks-per-client", "0").settings())
        for name, _, attribute, expected in OPTIONS:
            self.assertEqual(getattr(factory, attribute), expected, name)
        self.assertIsNone(factory.check_rates)

    def test_settings_file(self) -> None:
        """The same settings come from --config keys, and the command line still wins."""
        path = Path(self.mktemp())
        path.write_text(
            "[epop]\n" + "".join(f"{name} = {value}\n" for name, value, _, _ in OPTIONS)
            + "checks-per-client = 100\n",
            encoding="utf-8",
        )
        settings = self.parse("--config", str(path), "--hello-timeout", "20").settings()
        self.assertEqual(settings.hello_timeout, 20.0)
        self.assertEqual(settings.frame_timeout, 7.5)
        self.assertEqual(settings.upload_min_rate, 512.0)
        self.assertEqual(settings.checks_per_client, 100)

    def test_usage_errors(self) -> None:
        """A value that cannot work is a usage error naming the option."""
        for args in (
            ["--hello-timeout", "0"],
            ["--frame-timeout", "-1"],
            ["--upload-grace", "inf"],
            ["--upload-min-rate", "-5"],
            ["--checks-per-connection", "-1"],
            ["--checks-per-client", "-2"],
        ):
            error = self.assertRaises(usage.UsageError, self.parse, *args)
            self.assertIn(args[0], str(error))

    def test_bad_settings_refused_by_the_builder(self) -> None:
        """Another program building a relay gets a ValueError for a limit that cannot work."""
        for changes in ({"hello_timeout": 0}, {"upload_min_rate": -1}, {"checks_per_client": -1}):
            with self.assertRaises(ValueError):
                make_relay_service(MemoryReactorClock(), RelaySettings(check_at_start=False, **changes))
