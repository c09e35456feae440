from twisted.application.service import ServiceMaker

epop = ServiceMaker(
    "e-POP relay",
    "epop.relay.tap",
    "Relay PMSI uploads from workstations without Internet access to e-PMSI.",
    "epop",
)
