"""What sessions may touch on disk: the path sandbox (and, later, the agent's file tools)."""
