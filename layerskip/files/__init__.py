"""Where layerskip keeps what it writes (``$LAYERSKIP_HOME``) and how it writes it without
half-states: directories built under a temporary name and renamed into place, atomic files, JSON
readers and JSON Lines files that survive a cut last line."""
