"""
The relay's journal: the observer and writers that record the relay's
events (L{epop.journal.writer}) and the reader behind C{epop journal} and
C{epop connections} (L{epop.journal.reader}).

The journal is a file format shared by two programs that never run in the
same process, the relay that writes it and the command that reads it; both
ends live here so that the format is defined in one place.
"""
