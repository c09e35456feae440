"""
The relay's journal: the events the relay records and their records
(L{epop.journal.events}), the observer that picks them out of the log
(L{epop.journal.observer}) and the files they go to
(L{epop.journal.writer}); and the reader behind C{epop journal} and
C{epop connections} (L{epop.journal.reader}, L{epop.journal.filters},
L{epop.journal.table}, L{epop.journal.connections}, and the commands
themselves in L{epop.journal.commands}).  L{epop.journal.process} tells
the reader whether the relay that wrote a run still runs, from what the
writer recorded about it.

The journal is a file format shared by two programs that never run in the
same process, the relay that writes it and the command that reads it; both
ends live here so that the format is defined in one place.
"""
