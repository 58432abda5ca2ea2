"""Sessions: lifecycle (state), projection (context), supervision, and the manager."""
