//! berthctl: the command-line client of berth's node agents
