"""Everything that talks to CVAT: settings, connection, label spec, push, pull, manual route."""
