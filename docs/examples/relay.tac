"""
An e-POP relay inside an existing Twisted application.

Run it with:  twistd --nodaemon --pidfile= -y docs/examples/relay.tac

The relay is one service among others: here it sits next to a small status
page, as it would next to whatever a hospital gateway already runs.
Settings come from the environment so the same file serves every site.
"""

import os

from twisted.application import strports
from twisted.application.service import Application, MultiService
from twisted.internet import reactor
from twisted.web.resource import Resource
from twisted.web.server import Site
from twisted.web.static import Data

from epop import RelaySettings, make_relay_service

application = Application("hospital-gateway")
gateway = MultiService()
gateway.setServiceParent(application)

# What the application already had: a status page.
status = Resource()
status.putChild(b"", Data(b"gateway up\n", "text/plain"))
strports.service(os.environ.get("GATEWAY_STATUS", "tcp:8080:interface=127.0.0.1"), Site(status)).setServiceParent(gateway)

# The relay, attached like any other service.
settings = RelaySettings(
    listen=[os.environ.get("EPOP_LISTEN", "tcp:3358")],
    epmsi=os.environ.get("EPOP_EPMSI", "https://www.epmsi.atih.sante.fr"),
    ca_file=os.environ.get("EPOP_CA_FILE") or None,
    journal=os.environ.get("EPOP_JOURNAL", "epop-journal.jsonl"),
)
relay = make_relay_service(reactor, settings)
relay.setServiceParent(gateway)
